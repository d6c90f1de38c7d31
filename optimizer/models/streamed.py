"""A model whose weights stay on disk: the streaming build's `LoadedModel`.

`load_streamed(folder)` reads the config and tokenizer and builds the transformers module
with every parameter on the meta device (no memory, no initialization); buffers computed
from the config (rotary tables) are real. The weights are a `SafetensorsSource`
(`LoadedModel.weights`): capture, quantization and verification read them tensor by tensor,
and `materialized` fills one submodule (a decoder layer, the embedding) for the duration of a
`with` block, so the torch model runs layer by layer in the memory of one layer.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from optimizer.core.architectures import arch_for_model_type, output_tied
from optimizer.core.errors import InputError
from optimizer.core.hashing import sha256_file
from optimizer.models.preflight import check_tokenizer, meta_model, read_config_json
from optimizer.models.weight_source import SafetensorsSource, WeightSource
from optimizer.core.malloc_trim import release_free_memory


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device as they are registered
    (their initializers then run on meta tensors: nothing is allocated); buffers stay real."""
    register = torch.nn.Module.register_parameter

    def to_meta(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=False)

    torch.nn.Module.register_parameter = to_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def skeleton(config: Any, trust_remote_code: bool = False) -> Any:
    """The causal-LM module of `config` with its parameters on the meta device."""
    from transformers import AutoModelForCausalLM

    with parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)
    model.eval()
    model.requires_grad_(False)
    return model


def load_streamed(path: Path, trust_remote_code: bool, tokenizer_loader: Callable[[Path], Any] | None):
    """A HuggingFace folder as a `LoadedModel` whose weights are read lazily from its
    safetensors files (`weights`)."""
    from transformers import AutoConfig, GenerationConfig

    from optimizer.models.loader import LoadedModel

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise InputError(f"{path} has no *.safetensors weights to stream",
                         hint="--stream reads HuggingFace folders with safetensors weights")
    arch = arch_for_model_type(read_config_json(path).get("model_type"))
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    weights = SafetensorsSource(files)
    check_weights(meta_model(config, trust_remote_code), weights, arch)  # before the skeleton allocates
    model = skeleton(config, trust_remote_code)
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    tok = tokenizer_loader(path) if tokenizer_loader else None
    check_tokenizer(tok, config.vocab_size)
    source = {"kind": "huggingface", "path": str(path.resolve()),
              "files": [{"name": f.name, "sha256": sha256_file(f)} for f in files]}
    return LoadedModel(model=model, config=config, arch=arch, tokenizer=tok, source=source, weights=weights)


def check_weights(model: Any, weights: WeightSource, arch: Any) -> None:
    """Every parameter the module declares is in the checkpoint with its shape (a tied lm_head
    may be absent), before any tensor is read."""
    for name, param in model.named_parameters(remove_duplicate=False):
        name = source_name(name, model, arch)
        if not weights.has(name):
            raise InputError(f"the checkpoint has no tensor {name!r}",
                             hint="the weights do not match the model's config (config.json or the GGUF "
                                  "metadata: model_type, layer count, tie_word_embeddings)")
        if weights.shape(name) != tuple(param.shape):
            raise InputError(f"tensor {name!r} has shape {list(weights.shape(name))}, the config implies "
                             f"{list(param.shape)}",
                             hint="the weights do not match the model's config (config.json or the GGUF metadata)")


def source_name(name: str, model: Any, arch: Any) -> str:
    """Where parameter `name` is read from: itself, or the embedding for a tied lm_head."""
    return arch.embed if name == arch.lm_head and output_tied(model.config) else name


# checkpoint tensor name -> the tensor to use instead (e.g. a quantized linear's dequantized
# weight), or None for the checkpoint's own
Override = Callable[[str], "torch.Tensor | None"]


def _owners(module: torch.nn.Module, prefix: str) -> list[tuple[torch.nn.Module, str, str]]:
    """(owning module, attribute, full parameter name) of each parameter under `module`."""
    return [(m, n, prefix + (mn + "." if mn else "") + n)
            for mn, m in module.named_modules() for n, p in m._parameters.items() if p is not None]


def _fill(model: Any, owners: list, weights: WeightSource, arch: Any, override: Override | None) -> None:
    """Real parameters for `owners`, each tensor read once (a tied lm_head shares the table)."""
    read: dict[str, torch.nn.Parameter] = {}
    for owner, attr, full in owners:
        name = source_name(full, model, arch)
        if name not in read:
            value = override(name) if override else None
            read[name] = torch.nn.Parameter(weights.tensor(name) if value is None else value, requires_grad=False)
        owner._parameters[attr] = read[name]


def _empty(owners: list) -> None:
    """`owners`' parameters back on the meta device, and the memory their tensors (and the
    part's activations) held given back to the system: glibc keeps freed blocks in per-thread
    arenas, and layer after layer of reads and frees otherwise left a SmolLM2 FP8 calibration
    up to 1 GB resident above the 0.1 GB it still used (optimizer.core.malloc_trim)."""
    for owner, attr, _ in owners:
        owner._parameters[attr] = torch.nn.Parameter(owner._parameters[attr].to("meta"), requires_grad=False)
    release_free_memory()


@contextmanager
def materialized(model: Any, module_name: str, weights: WeightSource, arch: Any,
                 override: Override | None = None) -> Iterator[torch.nn.Module]:
    """Submodule `module_name` with real float32 parameters from `weights` (or `override`'s);
    back on the meta device afterwards."""
    module = model.get_submodule(module_name)
    owners = _owners(module, module_name + ".")
    try:
        _fill(model, owners, weights, arch, override)
        yield module
    finally:
        _empty(owners)


@contextmanager
def layer_by_layer(model: Any, weights: WeightSource, arch: Any, override: Override | None = None) -> Iterator[Any]:
    """`model` runnable as usual in the memory of its largest part: each decoder layer, the
    embedding and the output projection hold real parameters only during their own call; the
    small rest (norms) for the whole block."""
    names = {id(m): name for name, m in model.named_modules()}
    parts = [*model.model.layers, model.get_input_embeddings(), model.get_output_embeddings()]
    part_owners = [_owners(part, names[id(part)] + ".") for part in parts]
    inside = {(id(m), n) for owners in part_owners for m, n, _ in owners}
    rest = [(m, n, full) for m, n, full in _owners(model, "") if (id(m), n) not in inside]
    hooks = []
    for part, owners in zip(parts, part_owners):
        hooks.append(part.register_forward_pre_hook(lambda *_a, o=owners: _fill(model, o, weights, arch, override)))
        hooks.append(part.register_forward_hook(lambda *_a, o=owners: _empty(o)))
    try:
        _fill(model, rest, weights, arch, override)
        yield model
    finally:
        for hook in hooks:
            hook.remove()
        for owners in [rest, *part_owners]:  # also a part whose call raised
            _empty(owners)


@contextmanager
def running(loaded: Any, codes: dict[str, Any] | None = None) -> Iterator[Any]:
    """The torch module to run for a reference (verification, gate, KV-cache scales):
    `loaded.model` itself, or for a streamed model the same module filled layer by layer, its
    quantized linears (in `codes`, each with `dequantized()`) computing with the weights the
    engine stores."""
    if not loaded.streamed:
        yield loaded.model
        return

    def quantized(tensor: str) -> torch.Tensor | None:
        q = codes.get(tensor.removesuffix(".weight")) if codes and tensor.endswith(".weight") else None
        return None if q is None else q.dequantized()

    with layer_by_layer(loaded.model, loaded.weights, loaded.arch, quantized) as model:
        yield model
