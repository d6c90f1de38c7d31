"""The CLI end to end on tiny models, and every bad input: a clear message naming what was
wrong, a non-zero exit code, no traceback, and nothing left behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from optimizer.cli import main
from optimizer.core.architectures import supported_model_types


def run(*args: str):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def assert_clean_failure(code: int, output: str, *needles: str) -> None:
    assert code != 0, output
    assert "Traceback" not in output
    assert "error:" in output
    for needle in needles:
        assert needle in output, output


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory, smol_tokenizer_dir):
    out = tmp_path_factory.mktemp("cli") / "engine"
    code, output = run("model", "--random-weights", "--config", "tiny-gemma3",
                       "--tokenizer", smol_tokenizer_dir, "--out", out, "-q")
    assert code == 0, output
    return out


def test_generate_many_prompts_from_jsonl(engine_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('"Hello there"\n\n{"prompt": "Once upon", "max_tokens": 3, "stop_token_ids": [1]}\n'
                       '{"prompt": "A list:", "temperature": 0.8, "seed": 2, "top_k": 5}\n')
    result = CliRunner().invoke(main, ["generate", str(engine_dir), "--prompts", str(prompts),
                                       "--max-new-tokens", "5", "--ignore-eos"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2] and rows[1]["prompt"] == "Once upon"
    assert [r["completion_tokens"] for r in rows] == [5, 3, 5]
    alone = CliRunner().invoke(main, ["generate", str(engine_dir), "--prompt", "Hello there",
                                      "--max-new-tokens", "5", "--ignore-eos"])
    assert alone.stdout.startswith(rows[0]["text"])  # batched greedy = alone (fp32 engine)


@pytest.mark.parametrize("content, needle", [
    ('{"prompt": "x", "max_tokens": 0}', "max_new_tokens must be >= 1"),
    ('{"prompt": "x", "temprature": 1}', "unknown field 'temprature'"),
    ('{"text": "x"}', "expected a string or an object with a string 'prompt'"),
    ('not json', "not valid JSON"),
    ("", "has no prompts"),
])
def test_bad_prompt_files_name_the_line(engine_dir, tmp_path, content, needle):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(content + "\n")
    code, output = run("generate", engine_dir, "--prompts", prompts)
    assert_clean_failure(code, output, needle)


def test_serve_answers_health_and_completions(engine_dir):
    import socket
    import time

    import httpx2 as httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "optimizer.cli", "serve", str(engine_dir), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions",
                       json={"model": "engine", "prompt": "Hello", "max_tokens": 4, "ignore_eos": True})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()
        assert models["data"][0]["id"] == "engine"  # the folder's name
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "serving engine on http://127.0.0.1:" in output


def test_generate_streams_text_and_stats(engine_dir):
    code, output = run("generate", engine_dir, "--prompt", "Hello there", "--max-new-tokens", "6",
                       "--ignore-eos")
    assert code == 0, output
    assert "6 generated (length)" in output


def test_sampled_generation_is_reproducible(engine_dir):
    args = ("generate", engine_dir, "--prompt", "Hi", "--max-new-tokens", "8", "--ignore-eos",
            "--temperature", "0.8", "--top-k", "50", "--top-p", "0.9", "--seed", "3")
    first, second = (CliRunner().invoke(main, [str(a) for a in args]) for _ in range(2))
    assert first.exit_code == second.exit_code == 0
    assert first.stdout.strip() and first.stdout == second.stdout


def test_inspect_readable_and_json(engine_dir):
    code, output = run("inspect", engine_dir)
    assert code == 0, output
    for needle in ("gemma3", "sliding window [4]", "static layout: 16 slots", "cse", "model.onnx", "verified"):
        assert needle in output
    code, output = run("inspect", engine_dir, "--json")
    assert code == 0
    assert json.loads(output)["architecture"]["model_type"] == "gemma3_text"


def test_missing_model_path(tmp_path):
    code, output = run("model", tmp_path / "nope", "--out", tmp_path / "out")
    assert_clean_failure(code, output, "model path does not exist", "nope")
    assert list(tmp_path.iterdir()) == []


def test_folder_without_model(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("not a model")
    code, output = run("model", tmp_path / "empty", "--out", tmp_path / "out")
    assert_clean_failure(code, output, "holds no model", "config.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def fake_model_folder(folder, model_type: str, weights_name: str, weights: bytes):
    """A folder that looks like a HF model (config.json + one weights file) without being one."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    (folder / weights_name).write_bytes(weights)
    return folder


def test_unsupported_architecture_lists_supported(tmp_path):
    folder = fake_model_folder(tmp_path / "gpt2", "gpt2", "model.safetensors", b"")
    code, output = run("model", folder, "--out", tmp_path / "out")
    assert_clean_failure(code, output, "unsupported architecture", "'gpt2'", *supported_model_types())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2"]


def test_unsupported_architecture_in_random_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    code, output = run("model", "--random-weights", "--config", tmp_path / "config.json", "--out", tmp_path / "out")
    assert_clean_failure(code, output, "unsupported architecture", "'bert'")
    assert not (tmp_path / "out").exists()


def test_unknown_preset_lists_presets(tmp_path):
    code, output = run("model", "--random-weights", "--config", "llama-9000", "--out", tmp_path / "out")
    assert_clean_failure(code, output, "unknown config 'llama-9000'", "llama-3.2-1b", "gemma-3-270m")


def test_pickle_checkpoint_is_refused(tmp_path):
    folder = fake_model_folder(tmp_path / "m", "llama", "pytorch_model.bin", b"\x80\x04not really")
    code, output = run("model", folder, "--out", tmp_path / "out")
    assert_clean_failure(code, output, "pickle", "safetensors")
    assert not (tmp_path / "out").exists()


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "weights.txt"
    bad.write_text("hello")
    code, output = run("model", bad, "--out", tmp_path / "out")
    assert_clean_failure(code, output, "not a GGUF file")
    for size in (8, 20, 400):
        corrupt = tmp_path / "broken.gguf"
        corrupt.write_bytes(b"GGUF" + b"\x03\x00" * size)
        code, output = run("model", corrupt, "--out", tmp_path / "out")
        assert_clean_failure(code, output, "cannot read GGUF file", "broken.gguf")
    assert not (tmp_path / "out").exists()


def test_existing_output_is_refused(tmp_path, smol_tokenizer_dir):
    (tmp_path / "out").mkdir()
    code, output = run("model", "--random-weights", "--config", "tiny-llama", "--out", tmp_path / "out")
    assert_clean_failure(code, output, "already exists", "--overwrite")
    assert list((tmp_path / "out").iterdir()) == []


def test_checksum_failure_on_generate_and_inspect(engine_dir, tmp_path):
    copy = tmp_path / "engine"
    shutil.copytree(engine_dir, copy)
    (copy / "tokenizer.json").write_text("{}")
    for args in (("generate", copy, "--prompt", "hi"), ("inspect", copy)):
        code, output = run(*args)
        assert_clean_failure(code, output, "tokenizer.json fails its checksum", "rebuild")


def test_newer_format_version_on_generate(engine_dir, tmp_path):
    copy = tmp_path / "engine"
    shutil.copytree(engine_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    code, output = run("generate", copy, "--prompt", "hi")
    assert_clean_failure(code, output, "format version 99 is newer", "upgrade")


def test_not_an_engine(tmp_path):
    code, output = run("generate", tmp_path, "--prompt", "hi")
    assert_clean_failure(code, output, "not an engine directory", "manifest.json")
    code, output = run("inspect", tmp_path / "missing")
    assert_clean_failure(code, output, "engine directory does not exist")


def test_unavailable_provider(engine_dir):
    code, output = run("generate", engine_dir, "--prompt", "hi", "--provider", "tensorrt")
    assert_clean_failure(code, output, "execution provider 'tensorrt' is not available", "cpu")


def test_real_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "optimizer.cli", "model", str(tmp_path / "x"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "model path does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_corrupt_safetensors(tmp_path, tiny_hf_folders):
    folder = tmp_path / "m"
    shutil.copytree(tiny_hf_folders["llama"], folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated download
    code, output = run("model", folder, "--out", tmp_path / "out")
    assert_clean_failure(code, output, "not a valid safetensors file", str(folder))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_unknown_pass_is_rejected_before_any_work(tmp_path):
    code, output = run("model", "--random-weights", "--config", "tiny-llama", "--passes", "cse,fuse-evrything",
                       "--out", tmp_path / "out")
    assert_clean_failure(code, output, "unknown pass 'fuse-evrything'", "cse", "dead-code")
    assert "load model" not in output
    assert list(tmp_path.iterdir()) == []


def test_no_passes(tmp_path, smol_tokenizer_dir):
    code, output = run("model", "--random-weights", "--config", "tiny-qwen2", "--passes", "none",
                       "--out", tmp_path / "out", "-q")
    assert code == 0, output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["passes"] == []


def test_quantized_build_and_eval_cli(tiny_hf_folders, tmp_path):
    out = tmp_path / "q"
    code, output = run("model", tiny_hf_folders["llama"], "--quant", "int4", "--method", "gptq", "--group-size", "32",
                       "--act-order", "--calib", "tiny:4x32", "--out", out, "-q")
    assert code == 0, output
    code, output = run("inspect", out)
    assert "method=gptq" in output and "MatMulNBits" in output and "act_order=True" in output
    assert "awq_grid" not in output and "observer" not in output  # settings of other methods
    delta = next(p for p in json.loads((out / "manifest.json").read_text())["passes"] if p["name"] == "fuse-rms-norm")
    assert output.count("RMSNormalization +") == 1 and delta["op_delta"]["RMSNormalization"] > 0  # once per pass
    result = CliRunner().invoke(main, ["eval", str(out), "--dataset", "tiny", "--windows", "2", "--seq-len", "32", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["tokens_evaluated"] == 62 and report["perplexity"] > 1
    assert "quantization gptq" in report["evaluated_with"]


def test_quant_bad_inputs_cli(tmp_path):
    code, output = run("model", "--random-weights", "--config", "tiny-llama", "--quant", "int3", "--out", tmp_path / "o")
    assert_clean_failure(code, output, "unsupported quantization 'int3'", "int4", "int8")
    code, output = run("model", "--random-weights", "--config", "tiny-llama", "--quant", "int4", "--method", "hqq",
                       "--out", tmp_path / "o")
    assert_clean_failure(code, output, "unknown quantization method 'hqq'", "rtn, awq, gptq")
    code, output = run("model", "--random-weights", "--config", "tiny-llama", "--quant", "int4", "--method", "gptq",
                       "--calib", "nowhere:4x8", "--out", tmp_path / "o")
    assert_clean_failure(code, output, "neither a corpus name nor a file")
    assert list(tmp_path.iterdir()) == []


def test_too_little_calibration_text(tiny_hf_folders, tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("A short calibration text. " * 20)
    args = ("model", tiny_hf_folders["llama"], "--quant", "int4", "--method", "gptq", "--group-size", "32",
            "--calib", f"{text}:50x64")
    code, output = run(*args, "--out", tmp_path / "a")
    assert_clean_failure(code, output, "gives only", "50 were asked for")
    assert not (tmp_path / "a").exists()
    code, output = run(*args, "--calib-allow-fewer", "--out", tmp_path / "b", "-q")
    assert code == 0, output
    calibration = json.loads((tmp_path / "b" / "manifest.json").read_text())["quantization"]["calibration"]
    assert 0 < calibration["windows"][0] < 50


def test_plain_int4_builds_the_fast_format_and_exact_is_one_flag_away(tmp_path):
    from optimizer.options import with_fast_int4

    def built(*flags):
        out = tmp_path / f"e{len(list(tmp_path.iterdir()))}"
        code, output = run("model", "--random-weights", "--config", "tiny-llama", "--quant", "int4", *flags,
                           "--out", out, "-q")
        assert code == 0, output
        m = json.loads((out / "manifest.json").read_text())
        q = m["quantization"]
        return q["group_size"], q["symmetric"], q["lm_head_bits"], m["recipe"]["build"]["accuracy_level"]

    assert built() == (64, False, 8, 4)
    assert built("--int4-defaults", "exact") == (64, True, None, 0)
    assert built("--group-size", "32", "--sym") == (32, True, 8, 4)  # given flags win, the rest stays fast
    assert built("--accuracy-level", "0", "--lm-head-bits", "none") == (64, False, None, 0)
    # no fast format on other targets, and none for int8 / fp8 or without --quant
    assert with_fast_int4({"quantization": {"quant": "int4"}, "build": {"target": "tensorrt"}}) == \
        {"quantization": {"quant": "int4"}, "build": {"target": "tensorrt"}}
    assert with_fast_int4({"quantization": {"quant": "int8"}, "build": {}}) == {"quantization": {"quant": "int8"},
                                                                              "build": {}}
