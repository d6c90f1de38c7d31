"""The one layer-by-layer driver every calibrated method uses.

1. Run the model on the calibration windows once with every decoder layer replaced by a
   recorder (identity), stopping before the final norm: this yields layer 0's inputs and
   the keyword arguments each layer is called with (masks, rotary tables: these depend only
   on positions, not on weights).
2. For each layer in turn: hand its inputs to the method (which runs the layer with hooks,
   collects statistics and quantizes it), then recompute the layer's outputs with the
   quantized weights; they are the next layer's inputs.

With `float_stream`, the driver also carries the float model's own hidden states alongside
(each layer run with its float weights before it is quantized): methods that fit the
quantized layer to the float model's outputs (GPTAQ) read them as `LayerWork.float_inputs`.

Peak memory is the model plus one layer's activations over the calibration set (two with
`float_stream`); on a GPU (`device`), one layer and the activations. With `hold` (a streamed
model, weights on disk: `LoadedModel.hold`), the embedding holds real weights only for step 1
and each layer only for its own turn, so the model's float weights are never all in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from contextlib import nullcontext
from typing import Any, Callable, ContextManager

import numpy as np
import torch

from calibration.mappings import module_names
from optimizer.core.architectures import ArchSpec
from optimizer.core.progress import bar


class _StopForward(Exception):
    pass


@dataclass
class LayerWork:
    """What a method gets for one decoder layer."""

    index: int
    layer: torch.nn.Module
    inputs: list[torch.Tensor]  # per batch: (B, L, H) hidden states entering the layer
    kwargs: list[dict[str, Any]]  # per batch: keyword arguments of the layer call
    linears: dict[str, torch.nn.Linear]  # role -> module
    names: dict[str, str]  # role -> module name
    extra: dict[str, Any] = field(default_factory=dict)
    float_inputs: list[torch.Tensor] | None = None  # per batch: the float model's hidden states here

    def run(self) -> list[torch.Tensor]:
        """The layer's outputs on every batch (with its current weights)."""
        return [call_layer(self.layer, x, kw) for x, kw in zip(self.inputs, self.kwargs)]


def call_layer(layer: torch.nn.Module, x: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    out = layer(x, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    return model.model.layers


def run_sequential(model: Any, arch: ArchSpec, windows: np.ndarray, batch_size: int,
                   quantize_layer: Callable[[LayerWork], None], keep: Callable[[str], bool],
                   quiet: bool = False, float_stream: bool = False,
                   restore: Callable[[LayerWork], bool] | None = None,
                   finished: Callable[[LayerWork], None] | None = None, device: str = "cpu",
                   hold: Callable[[str], ContextManager[Any]] | None = None,
                   leaving: Callable[[LayerWork], None] | None = None) -> list[torch.Tensor]:
    """Quantize `model` layer by layer on `windows` (N, L) with `quantize_layer`; returns the
    quantized model's last hidden states per batch (before the final norm), on the CPU.
    `restore(work)` may put a layer back as an earlier run left it (True: not quantized again);
    `finished(work)` is told of each layer quantized. `hold(module_name)`: a context during
    which that submodule has real weights (the embedding for the recording pass, each layer for
    its turn); `leaving(work)` is called at the end of each layer's turn, while it holds them.

    With `device` "cuda", the activations live on the GPU and each layer moves there for its
    own turn (tensors the method creates default to that device), then back: the GPU holds
    one layer and the activations, whatever the model's size."""
    batches = [torch.from_numpy(windows[i:i + batch_size]) for i in range(0, len(windows), batch_size)]
    hold = hold or (lambda _name: nullcontext())
    with torch.no_grad():
        with hold(arch.embed.removesuffix(".weight")):
            inputs, kwargs = _record_layer_calls(model, batches)  # the embeddings, where the model is
        inputs, kwargs = to_device(inputs, device), to_device(kwargs, device)
        float_inputs = inputs if float_stream else None
        layers = decoder_layers(model)
        with bar("quantizing layers", len(layers), quiet) as advance:
            for i, layer in enumerate(layers):
                with hold(arch.layer_prefix.format(i=i).rstrip(".")):
                    names = {r: n for r, n in module_names(arch, i).items() if not keep(n)}
                    linears = {r: model.get_submodule(n) for r, n in names.items()}
                    layer.to(device)
                    work = LayerWork(i, layer, inputs, [kw[i] for kw in kwargs], linears, names,
                                     float_inputs=float_inputs)
                    with torch.device(device):
                        if float_inputs is not None:  # the float model's next hidden states, before quantizing
                            float_inputs = [call_layer(layer, x, kw) for x, kw in zip(float_inputs, work.kwargs)]
                        if restore is None or not restore(work):
                            if linears:
                                quantize_layer(work)
                            if finished is not None:
                                finished(work)
                        inputs = work.run()
                    layer.to("cpu")
                    if leaving is not None:
                        leaving(work)
                advance()
    return to_device(inputs, "cpu")


def to_device(value: Any, device: str) -> Any:
    """Tensors in (nested lists, tuples and dicts of) `value` moved to `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def _record_layer_calls(model: Any, batches: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[list[dict]]]:
    """Layer-0 inputs per batch, and per batch the kwargs of every layer's call."""
    layers = decoder_layers(model)
    first_inputs: list[torch.Tensor] = []
    calls: list[dict] = []

    def recorder(index: int):
        def forward(hidden_states, *args, **kwargs):
            if args:
                raise RuntimeError("decoder layers are expected to take keyword arguments only")
            kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "use_cache")}
            if index == 0:
                first_inputs.append(hidden_states)
            calls.append(kwargs)
            return hidden_states
        return forward

    per_batch: list[list[dict]] = []
    for i, layer in enumerate(layers):
        layer.forward = recorder(i)
    try:
        for ids in batches:
            calls = []
            run_decoder_layers(model, ids)
            per_batch.append(calls)
    finally:
        for layer in layers:
            del layer.forward  # back to the class's forward
    return first_inputs, per_batch


def run_decoder_layers(model: Any, ids: torch.Tensor) -> None:
    """A forward pass over `ids` that stops before the final norm: every decoder layer runs
    (with whatever hooks are on it), the lm_head does not."""
    def stop(*_args, **_kwargs):
        raise _StopForward

    handle = model.model.norm.register_forward_pre_hook(stop)
    try:
        model(input_ids=ids, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
