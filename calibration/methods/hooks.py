"""Hook plumbing shared by the per-layer steps: forward pre-hooks that exist only while a
`with` block runs, and the statistics they gather from one run of the layer."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch

from calibration.mappings import INPUT_GROUPS
from calibration.rtn import QuantizedLinear
from calibration.sequential import LayerWork, call_layer


class _Captured(Exception):
    pass


@contextmanager
def pre_hooks(hooks: Sequence[tuple[torch.nn.Module, Callable]], with_kwargs: bool = False) -> Iterator[None]:
    """Forward pre-hooks (module, fn) for the duration of the block, removed however it ends."""
    handles = [module.register_forward_pre_hook(fn, with_kwargs=with_kwargs) for module, fn in hooks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def store_quantized(linear: torch.nn.Linear, q: QuantizedLinear, name: str, codes: dict[str, QuantizedLinear]) -> None:
    """The linear computes what the engine will (its dequantized weights); the codes go to the lowering pass."""
    linear.weight.data.copy_(q.dequantize().to(linear.weight.dtype))
    codes[name] = q


def capture_calls(work: LayerWork, modules: dict[str, torch.nn.Module]) -> dict[str, list]:
    """Run the layer once; return each module's (input, kwargs) per batch."""
    seen: dict[str, list] = {name: [] for name in modules}

    def recorder(name: str) -> Callable:
        return lambda _m, args, kwargs: seen[name].append((args[0] if args else kwargs["hidden_states"], kwargs))

    run_to_last_hook(work, [(module, recorder(name)) for name, module in modules.items()], with_kwargs=True)
    return seen


def observe_shared_inputs(work: LayerWork, new_stat: Callable[[str], Any],
                          update: Callable[[Any, torch.Tensor], None]) -> dict[str, Any]:
    """Run the layer once, feeding each group of linears that read one tensor (INPUT_GROUPS)
    into one statistic made by new_stat(first role); returns role -> its group's statistic."""
    stats: dict[str, Any] = {}
    hooks = []
    for group in INPUT_GROUPS:
        present = [r for r in group if r in work.linears]
        if not present:
            continue
        stat = new_stat(present[0])
        stats.update({r: stat for r in present})

        def observe(_m, args, stat=stat) -> None:  # returns None: the input passes through unchanged
            update(stat, args[0])

        hooks.append((work.linears[present[0]], observe))
    run_to_last_hook(work, hooks)
    return stats


def run_to_last_hook(work: LayerWork, hooks: Sequence[tuple[torch.nn.Module, Callable]],
                     with_kwargs: bool = False) -> None:
    """Run the layer on every batch with these forward pre-hooks, each run cut short once every
    hooked module has had its input: what follows (the MLP's down projection and the rest of
    the layer, when down is hooked) would be computed for nothing."""
    waiting: set[int] = set()

    def reached(module: torch.nn.Module, _args) -> None:  # registered last: runs after the hooks
        waiting.discard(id(module))
        if not waiting:
            raise _Captured

    modules = {id(m): m for m, _ in hooks}
    with pre_hooks(hooks, with_kwargs=with_kwargs), pre_hooks([(m, reached) for m in modules.values()]):
        for x, kwargs in zip(work.inputs, work.kwargs):
            waiting.update(modules)
            try:
                call_layer(work.layer, x, kwargs)
            except _Captured:
                pass


def input_of(layer: torch.nn.Module, module: torch.nn.Module, x: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """The tensor `module` receives when `layer` runs on x (the rest of the layer is skipped)."""
    seen: list[torch.Tensor] = []

    def stop(_m, args) -> None:
        seen.append(args[0])
        raise _Captured

    with pre_hooks([(module, stop)]):
        try:
            call_layer(layer, x, kwargs)
        except _Captured:
            pass
    if not seen:
        raise RuntimeError(f"{type(module).__name__} was not called by its decoder layer")
    return seen[0]
