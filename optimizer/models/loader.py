"""Load a model as a torch module: a HuggingFace folder, a GGUF file, or a named config.

Safe by default: weights come from safetensors or GGUF only (pickle checkpoints are refused),
and remote code runs only with `trust_remote_code=True`. The architecture is checked against
the registry (`architectures.py`) from the config alone, before any weight is read.
"""

from __future__ import annotations

import json
import logging
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Iterator

import torch

from optimizer.core.errors import InputError, OptimizerError, UnsupportedModelError
from optimizer.core.hashing import sha256_file
from optimizer.core.architectures import ArchSpec, arch_for_model_type
from optimizer.models.gguf_fast import fast_gguf
from optimizer.models.gguf_tensors import read_tensors
from optimizer.models.gguf_weights import GgufSource, load_gguf_model
from optimizer.models.preflight import check_fits, check_model_files, check_tokenizer, meta_model, read_config_json
from optimizer.models.weight_source import OverlaySource, SafetensorsSource
from optimizer.models.presets import PRESETS, preset_names

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


@dataclass
class LoadedModel:
    """A model ready for capture: the eval-mode torch module and everything the engine needs."""

    model: Any  # transformers PreTrainedModel, eval mode
    config: Any  # transformers PretrainedConfig
    arch: ArchSpec
    tokenizer: Any | None  # transformers tokenizer, or None (random weights without --tokenizer)
    source: dict[str, Any] = field(default_factory=dict)  # identity recorded in the manifest
    # streamed (optimizer.models.streamed): the weights stay on disk, read tensor by tensor from
    # here, and `model` holds its parameters on the meta device; None: they are in `model`
    weights: Any | None = None

    @property
    def streamed(self) -> bool:
        return self.weights is not None

    def hold(self, module_name: str) -> ContextManager[Any]:
        """Submodule `module_name` with real weights for the duration of a `with` block: read
        from disk for a streamed model (back on the meta device after), as it is otherwise."""
        if not self.streamed:
            return nullcontext(self.model.get_submodule(module_name))
        from optimizer.models.streamed import materialized

        return materialized(self.model, module_name, self.weights, self.arch)

    def override_weights(self, overrides: dict[str, Any]) -> None:
        """A streamed model's tensors `overrides` (name -> float32 tensor) replace the
        checkpoint's from now on (capture, verification): parameters calibration changed."""
        if not self.streamed:
            raise ValueError("only a streamed model's weights are read from a source")
        if overrides:
            self.weights = OverlaySource(self.weights, overrides)


def load_model(source: str | Path | None = None, *, random_weights: bool = False,
               config: str | None = None, tokenizer: str | Path | None = None, seed: int = 0,
               trust_remote_code: bool = False, quiet: bool = False, stream: bool = False) -> LoadedModel:
    """Load from a HF folder or .gguf file, or build random weights from a named config.
    With `stream`, the weights stay on disk (optimizer.models.streamed): a HF folder's
    safetensors, or a GGUF file, read tensor by tensor."""
    _quiet_transformers(quiet)
    if stream and random_weights:
        raise InputError("--stream reads a HuggingFace folder's safetensors weights lazily, not random weights",
                         hint="write the model as a folder first (`optimize random-checkpoint PRESET --out DIR`), "
                              "or drop --stream")
    if random_weights:
        if source is not None:
            raise InputError("--random-weights takes no model path",
                             hint="pass either a model path, or --random-weights --config NAME")
        if config is None:
            raise InputError("--random-weights needs --config",
                             hint="a preset (" + ", ".join(preset_names()) + ") or a config.json path")
        return _load_random(config, tokenizer, seed, trust_remote_code)
    if source is None:
        raise InputError("no model given",
                         hint="pass a HuggingFace folder or a .gguf file, or --random-weights --config NAME")
    if config is not None:
        raise InputError("--config is only used with --random-weights",
                         hint="drop --config, or add --random-weights")
    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"model path does not exist: {path}",
                         hint="pass a HuggingFace folder (config.json + *.safetensors) or a .gguf file")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise InputError(f"{path} is a file but not a GGUF file",
                             hint="pass a .gguf file, or the HuggingFace folder that holds config.json")
        return _load_gguf(path, trust_remote_code, stream)
    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _load_gguf(ggufs[0], trust_remote_code, stream)
        raise InputError(f"{path} holds no model: no config.json" +
                         (f" and {len(ggufs)} .gguf files" if ggufs else " and no .gguf file"),
                         hint="pass a HuggingFace model folder (config.json + *.safetensors) "
                              "or one .gguf file")
    if stream:
        from optimizer.models.streamed import load_streamed

        with _reading(path, "the model folder"):
            return load_streamed(path, trust_remote_code,
                                 (lambda p: _load_tokenizer(p, trust_remote_code)) if _has_tokenizer(path) else None)
    return _load_hf_folder(path, trust_remote_code)


def _load_hf_folder(path: Path, trust_remote_code: bool) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM

    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if pickles:
            raise InputError(
                f"{path} has only pickle checkpoints ({', '.join(pickles[:3])}); "
                "they can run arbitrary code when loaded and are refused",
                hint="convert them to safetensors (model.save_pretrained(dir, safe_serialization=True) "
                     "in a trusted environment) and pass that folder")
        raise InputError(f"{path} has config.json but no *.safetensors weights",
                         hint="add the model's .safetensors files to the folder")
    arch = arch_for_model_type(read_config_json(path).get("model_type"))
    with _reading(path, "the model folder"):
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    check_model_files(config, arch, lambda _: SafetensorsSource(weights, strict=False), trust_remote_code)
    with _reading(path, "the model folder"):
        model = AutoModelForCausalLM.from_pretrained(
            path, config=config, dtype=torch.float32, use_safetensors=True,
            trust_remote_code=trust_remote_code)
    tok = _load_tokenizer(path, trust_remote_code) if _has_tokenizer(path) else None
    files = [{"name": w.name, "sha256": sha256_file(w)} for w in weights]
    return _finish(model, arch, tok, {"kind": "huggingface", "path": str(path.resolve()), "files": files})


def _load_gguf(path: Path, trust_remote_code: bool, stream: bool = False) -> LoadedModel:
    with fast_gguf():  # the metadata parsed once for config and tokenizer
        return _load_gguf_parts(path, stream)


def _load_gguf_parts(path: Path, stream: bool = False) -> LoadedModel:
    from transformers import AutoConfig, AutoTokenizer

    folder, name = path.parent, path.name
    tensors = read_tensors(path)  # header and tensor table bounds-checked before transformers reads the file
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except Exception as exc:  # the GGUF parser raises struct/Value/Key/OS errors on bad files
        text = str(exc) or type(exc).__name__
        if isinstance(exc, ValueError) and "not supported" in text:
            raise UnsupportedModelError(f"cannot load {path}: {text}",
                                        hint="supported GGUF architectures: llama, mistral, qwen2, gemma3") from exc
        raise InputError(f"cannot read GGUF file {path}: {text}",
                         hint="check that the file is a complete GGUF model (re-download or re-assemble it)") from exc
    arch = arch_for_model_type(config.model_type)
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config  # weights come out dequantized
    weights = None
    with _reading(path, "the GGUF weights"):
        if stream:  # the parameters on the meta device, each tensor dequantized when read
            from optimizer.models.streamed import check_weights, skeleton

            meta = meta_model(config)  # shapes checked before the skeleton allocates anything
            weights = GgufSource(tensors, config, meta)
            check_weights(meta, weights, arch)
            model = skeleton(config)
        else:
            source = check_model_files(config, arch, lambda meta: GgufSource(tensors, config, meta))
            model = load_gguf_model(source, config)
    with _reading(path, "the GGUF file's tokenizer"):
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    files = [{"name": name, "sha256": sha256_file(path)}]
    loaded = _finish(model, arch, tok, {"kind": "gguf", "path": str(path.resolve()), "files": files})
    loaded.weights = weights
    return loaded


def _load_random(config_ref: str, tokenizer: str | Path | None, seed: int,
                 trust_remote_code: bool) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM

    values = resolve_config(config_ref)
    arch = arch_for_model_type(values.get("model_type"))
    values = dict(values)
    model_type = values.pop("model_type")
    try:
        config = AutoConfig.for_model(model_type, **values)
    except Exception as exc:  # transformers' config validation raises several kinds
        raise InputError(f"config {config_ref!r} is not valid: {exc}", hint="check its keys and values") from exc
    check_fits(meta_model(config, trust_remote_code), f"config {config_ref!r}", stream_hint=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tok = None
    if tokenizer is not None:
        tpath = Path(tokenizer).expanduser()
        if not tpath.exists():
            raise InputError(f"tokenizer path does not exist: {tpath}",
                             hint="pass a folder with tokenizer.json, or a .gguf file")
        tok = _load_tokenizer(tpath, trust_remote_code)
    source = {"kind": "random", "config": config_ref, "seed": seed, "files": []}
    return _finish(model, arch, tok, source)


def resolve_config(config_ref: str) -> dict[str, Any]:
    """A preset name or a config.json path -> config values (with model_type)."""
    if config_ref in PRESETS:
        return dict(PRESETS[config_ref])
    path = Path(config_ref).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise InputError(f"unknown config {config_ref!r}: neither a preset nor a config.json path",
                         hint="presets: " + ", ".join(preset_names()))
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from exc
    if "model_type" not in values:
        raise InputError(f"{path} has no model_type", hint="a HuggingFace config.json names its model_type")
    return values


@contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Report a library's failure to read the user's files as an input error naming the file."""
    try:
        yield
    except OptimizerError:
        raise
    except Exception as exc:  # transformers / safetensors / gguf raise many kinds on bad files
        raise InputError(f"cannot read {what} at {path}: {str(exc) or type(exc).__name__}",
                         hint="check that the files are complete and not corrupted") from exc


def _has_tokenizer(path: Path) -> bool:
    return any((path / name).exists() for name in _TOKENIZER_FILES)


def _load_tokenizer(path: Path, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    if path.is_file() and path.suffix.lower() == ".gguf":
        with _reading(path, "the GGUF file's tokenizer"):
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if not _has_tokenizer(path):
        raise InputError(f"{path} holds no tokenizer (no tokenizer.json or tokenizer.model)",
                         hint="pass a model folder or engine directory that has tokenizer files")
    with _reading(path, "the tokenizer"):
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def _finish(model: Any, arch: ArchSpec, tok: Any, source: dict[str, Any]) -> LoadedModel:
    check_tokenizer(tok, model.config.vocab_size)
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, config=model.config, arch=arch, tokenizer=tok, source=source)


def _quiet_transformers(quiet: bool) -> None:
    """transformers logs and warns freely; keep the CLI output to what the user needs. Its
    progress bars are off (the GGUF one in optimizer.models.gguf_fast): the build's "load
    model" step reports in their place, with progress lines in logs (optimizer.core.progress)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="transformers")
