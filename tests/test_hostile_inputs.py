"""A catalogue of broken and hostile inputs to the CLI: truncated and lying safetensors and
GGUF files, duplicate tensor names, configs that disagree with their weights or ask for absurd
sizes, broken tokenizers, bad engines. Every one ends with an `error:` line naming the
problem, a non-zero exit code, no traceback, and nothing written beside the inputs.

The absurd sizes are refused before anything is allocated (optimizer/models/preflight.py,
the header parsers' bounds checks): each case runs in this process, which would otherwise be
killed or raise MemoryError, which the assertions would catch as a traceback."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner

from optimizer.cli import main
from tests.conftest import make_tiny_model
from tests.hostile_files import tiny_llama_gguf


def run(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output + (repr(result.exception) if result.exception
                                              and not isinstance(result.exception, SystemExit) else "")


# -- file edits ------------------------------------------------------------------------------
def st_parts(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def st_write(path: Path, header: dict | str, body: bytes) -> None:
    text = (header if isinstance(header, str) else json.dumps(header)).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)


def st_edit(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / "model.safetensors"
        header, body = st_parts(path)
        edit(header)
        st_write(path, header, body)
    return apply


def first_weight(header: dict) -> str:
    return next(k for k in header if k != "__metadata__" and len(header[k]["shape"]) == 2)


def gguf_field(data: bytes, name: str) -> int:
    """Byte position just after tensor `name`'s name in a GGUF header (n_dims, dims, type, offset follow)."""
    key = struct.pack("<Q", len(name)) + name.encode()
    return data.index(key) + len(key)


def gguf_patch(name: str, fmt: str, value: int, skip: int) -> Callable[[bytes], bytes]:
    def apply(data: bytes) -> bytes:
        at = gguf_field(data, name) + skip
        return data[:at] + struct.pack(fmt, value) + data[at + struct.calcsize(fmt):]
    return apply


EMB = "token_embd.weight"  # 2 dims: n_dims u32, dims 2 x u64, type u32, offset u64
# -- safetensors / HF folder cases: (id, edit of a copy of the tiny llama folder, message) --------
FOLDER_CASES = [
    ("st-truncated-header", lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:1000]),
     "safetensors"),
    ("st-truncated-data", lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-100]),
     "does not fit"),
    ("st-empty-file", lambda f: (f / "model.safetensors").write_bytes(b""), "shorter than its 8-byte header"),
    ("st-header-length-absurd", lambda f: (f / "model.safetensors").write_bytes(
        struct.pack("<Q", 1 << 62) + (f / "model.safetensors").read_bytes()[8:]), "a header of"),
    ("st-header-not-json", lambda f: st_write(f / "model.safetensors", "{nope", b"\0" * 64), "not JSON"),
    ("st-header-not-object", lambda f: st_write(f / "model.safetensors", "[1, 2]", b""), "not a JSON object"),
    ("st-offsets-past-end", st_edit(lambda h: h[first_weight(h)].update(data_offsets=[0, 1 << 40])), "does not fit"),
    ("st-shape-absurd", st_edit(lambda h: h[first_weight(h)].update(shape=[1 << 40, 1 << 40])), "does not fit"),
    ("st-shape-negative", st_edit(lambda h: h[first_weight(h)].update(shape=[-1, 64])), "does not fit"),
    ("st-unknown-dtype-lying-size", st_edit(lambda h: h[first_weight(h)].update(dtype="F99", data_offsets=[0, 1 << 50])),
     "F99"),
    ("st-missing-tensor", st_edit(lambda h: h.pop("model.layers.1.mlp.up_proj.weight")), "has no tensor"),
    ("st-duplicate-name", lambda f: _duplicate_entry(f / "model.safetensors"), "listed twice"),
    ("st-duplicate-across-shards", lambda f: shutil.copy(f / "model.safetensors", f / "model-2.safetensors"),
     "is in two checkpoint files"),
    ("config-disagrees", lambda f: _config(f, intermediate_size=256), "the config implies"),
    ("config-more-layers", lambda f: _config(f, num_hidden_layers=3), "has no tensor 'model.layers.2"),
    ("config-absurd-sizes", lambda f: _config(f, hidden_size=1 << 20, intermediate_size=1 << 22),
     "the config implies"),
    ("config-not-json", lambda f: (f / "config.json").write_text("{model_type: llama"), "not valid JSON"),
    ("config-unsupported-type", lambda f: _config(f, model_type="gpt2"), "gpt2"),
    ("config-inconsistent-heads", lambda f: _config(f, num_attention_heads=3, head_dim=None), "attention heads"),
    ("tokenizer-corrupt", lambda f: (f / "tokenizer.json").write_text("{not json"), "cannot read the tokenizer"),
    ("tokenizer-mismatched", lambda f: make_tiny_model("tiny-llama", {"vocab_size": 1000}).save_pretrained(f),
     "the tokenizer has 49152 tokens but the model's vocabulary is 1000"),
    ("pickle-only", lambda f: ((f / "model.safetensors").unlink(), (f / "pytorch_model.bin").write_bytes(b"\x80\x04")),
     "pickle"),
]


def _duplicate_entry(path: Path) -> None:
    """The header's JSON text with its first weight's entry written a second time."""
    header, body = st_parts(path)
    name = first_weight(header)
    st_write(path, json.dumps(header)[:-1] + f", {json.dumps(name)}: {json.dumps(header[name])}}}", body)


def _config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


def assert_clean_failure(code: int, output: str, needle: str) -> None:
    assert code != 0, output
    assert "Traceback" not in output and "MemoryError" not in output, output
    assert "error:" in output, output
    assert needle in output, output


NOT_STREAMED = ("pickle-only", "config-unsupported-type")  # refused before either load begins
FOLDER_RUNS = [(case, stream) for case in FOLDER_CASES for stream in (False, True)
               if not (stream and case[0] in NOT_STREAMED)]


@pytest.mark.parametrize("case, stream", FOLDER_RUNS,
                         ids=[c[0] + ("-stream" if s else "") for c, s in FOLDER_RUNS])
def test_hostile_model_folder(case, stream, tmp_path, tiny_hf_folders):
    name, edit, needle = case
    folder = tmp_path / "m"
    shutil.copytree(tiny_hf_folders["llama"], folder)
    edit(folder)
    code, output = run("model", folder, "--out", tmp_path / "out", *(["--stream"] if stream else []))
    assert_clean_failure(code, output, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # nothing written, no lock file left


# -- GGUF cases: (id, edit of the tiny GGUF's bytes, message) ---------------------------------
GGUF_CASES = [
    ("gguf-truncated-data", lambda d: d[:-1000], "cannot read GGUF file"),
    ("gguf-truncated-metadata", lambda d: d[:5000], "cannot read GGUF file"),
    ("gguf-bad-magic", lambda d: b"GGUX" + d[4:], "cannot read GGUF file"),
    ("gguf-unsupported-version", lambda d: d[:4] + struct.pack("<I", 99) + d[8:], "cannot read GGUF file"),
    ("gguf-tensor-count-absurd", lambda d: d[:8] + struct.pack("<Q", 1 << 60) + d[16:], "cannot read GGUF file"),
    ("gguf-metadata-count-absurd", lambda d: d[:16] + struct.pack("<Q", 1 << 60) + d[24:], "cannot read GGUF file"),
    ("gguf-dims-absurd", gguf_patch(EMB, "<Q", 1 << 40, 4), "cannot read GGUF file"),
    ("gguf-offset-past-end", gguf_patch(EMB, "<Q", 1 << 40, 4 + 16 + 4), "cannot read GGUF file"),
    ("gguf-unknown-type", gguf_patch(EMB, "<I", 250, 4 + 16), "cannot read GGUF file"),
    ("gguf-too-many-dims", gguf_patch(EMB, "<I", 1000, 0), "cannot read GGUF file"),
    ("gguf-name-length-absurd", lambda d: d.replace(struct.pack("<Q", len(EMB)) + EMB.encode(),
                                                    struct.pack("<Q", 1 << 60) + EMB.encode(), 1), "cannot read GGUF file"),
]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, smollm2_gguf) -> Path:
    return tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", smollm2_gguf)


@pytest.mark.parametrize("stream", [False, True], ids=["in-memory", "stream"])
@pytest.mark.parametrize("case", GGUF_CASES, ids=[c[0] for c in GGUF_CASES])
def test_hostile_gguf(case, stream, tmp_path, tiny_gguf):
    name, edit, needle = case
    path = tmp_path / "model.gguf"
    path.write_bytes(edit(tiny_gguf.read_bytes()))
    code, output = run("model", path, "--out", tmp_path / "out", *(["--stream"] if stream else []))
    assert_clean_failure(code, output, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


@pytest.mark.parametrize("stream", [False, True], ids=["in-memory", "stream"])
@pytest.mark.parametrize("kind, needle", [
    ("duplicate", "blk.0.ffn_up.weight"),
    ("metadata-disagrees", "the config implies [49152, 96]"),
    ("metadata-absurd", "the config implies [49152, 1048576]"),
])
def test_gguf_whose_tensors_disagree(kind, needle, stream, tmp_path, smollm2_gguf):
    settings = {"duplicate": {"duplicate": "blk.0.ffn_up.weight"}, "metadata-disagrees": {"embedding_length": 96},
                "metadata-absurd": {"embedding_length": 1 << 20}}[kind]
    path = tiny_llama_gguf(tmp_path / "model.gguf", smollm2_gguf, **settings)
    code, output = run("model", path, "--out", tmp_path / "out", *(["--stream"] if stream else []))
    assert_clean_failure(code, output, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


# -- other CLI inputs ------------------------------------------------------------------------
def test_random_weights_config_too_large_for_memory(tmp_path):
    config = tmp_path / "huge.json"
    config.write_text(json.dumps({"model_type": "llama", "hidden_size": 65536, "intermediate_size": 262144,
                                  "num_hidden_layers": 200, "num_attention_heads": 512, "num_key_value_heads": 8,
                                  "vocab_size": 1 << 20}))
    code, output = run("model", "--random-weights", "--config", config, "--out", tmp_path / "out")
    assert_clean_failure(code, output, "GiB for its fp32 weights, more than this machine's")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.json"]


def test_random_weights_config_with_invalid_values(tmp_path):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 3,
                                  "num_hidden_layers": 1, "vocab_size": 100}))
    code, output = run("model", "--random-weights", "--config", config, "--out", tmp_path / "out")
    assert_clean_failure(code, output, "config")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


def test_output_path_is_a_file(tmp_path):
    (tmp_path / "out").write_text("x")
    code, output = run("model", "--random-weights", "--config", "tiny-llama", "--out", tmp_path / "out")
    assert_clean_failure(code, output, "exists and is not a directory")


@pytest.mark.parametrize("damage, needle", [
    (lambda e: (e / "manifest.json").write_text("{"), "not valid JSON"),
    (lambda e: (e / "manifest.json").write_text("[]"), "not a JSON object"),
    (lambda e: (e / "manifest.json").write_text('{"format_version": 1}'), "no 'model' section"),
    (lambda e: _manifest(e, files={"../../etc/passwd": {"sha256": "0", "size": 1}}), "inside the engine"),
    (lambda e: _manifest(e, model={"file": "/etc/passwd"}), "inside the engine"),
    (lambda e: (e / "model.onnx").unlink(), "engine file missing"),
    (lambda e: (e / "model.onnx").write_bytes(b"\0" * 10), "fails its checksum"),
])
def test_broken_engine_directories(damage, needle, tmp_path, cli_engine):
    engine = tmp_path / "engine"
    shutil.copytree(cli_engine, engine)
    damage(engine)
    for args in (("generate", engine, "--prompt", "hi"), ("inspect", engine)):
        code, output = run(*args)
        assert_clean_failure(code, output, needle)


def _manifest(engine: Path, **sections) -> None:
    manifest = json.loads((engine / "manifest.json").read_text())
    (engine / "manifest.json").write_text(json.dumps({**manifest, **sections}))


@pytest.fixture(scope="module")
def cli_engine(tmp_path_factory, smol_tokenizer_dir) -> Path:
    out = tmp_path_factory.mktemp("engine") / "engine"
    code, output = run("model", "--random-weights", "--config", "tiny-llama", "--tokenizer", smol_tokenizer_dir,
                       "--out", out, "-q")
    assert code == 0, output
    return out


@pytest.mark.parametrize("args, needle", [
    (["--api-key-file", "/nonexistent/keys.txt"], "cannot read the API key file"),
    (["--api-key-file", "EMPTY"], "holds no key"),
    (["--max-waiting", "-1"], "--max-waiting must be >= 0"),
    (["--request-timeout", "-5"], "--request-timeout must be >= 0"),
])
def test_bad_serve_limits_are_refused_before_loading(args, needle, tmp_path):
    empty = tmp_path / "keys.txt"
    empty.write_text("# no keys yet\n\n")
    args = [str(empty) if a == "EMPTY" else a for a in args]
    code, output = run("serve", tmp_path / "no-engine-needed", *args)
    assert_clean_failure(code, output, needle)
