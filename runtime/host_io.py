"""A step's small inputs and its logits in preallocated host buffers, bound by pointer.

On CPU a batch-1 decode step of SmolLM2-135M int4 takes ~6-7 ms in onnxruntime, and the
generic IO-binding path added ~0.75 ms around it (measured on the 2-core CPU machine; ~0.25 ms
with these buffers): `bind_cpu_input` copies each input into a new OrtValue, an unbound
logits output is allocated by onnxruntime each step, and `IOBinding.get_outputs()` wraps
every output (logits and all 2 x layers present tensors) to hand back one. Here the
input_ids / attention_mask / logits_positions (or logits_from) arrays and the logits live in buffers sized once
for the executor's largest step (slots x capacity positions), so a step writes a few
numbers in place, rebinds the memory only when the step's shapes change, and reads the logits
as a numpy view.

Decode steps (`decode`) bind the attention mask as wide as the cache (rows x capacity), each
row right-padded with zeros after its length, as rows of different lengths already are in a
batch: the shapes then stay the same from step to step and nothing is bound again (the mask
was rebound every step when it grew one position at a time). GroupQueryAttention reads each
row's length from its mask (seqlens_k) and attends over that many positions, so the logits are
the same to the bit (tests/test_runtime.py). Host work between two decode steps matters more
than its count of operations suggests: a step streams the weights (~90 MB for SmolLM2 int4)
through the caches, and four small numpy calls right after it took 34 us against 6 us for the
same calls repeated (2-core machine). With the mask bound once and the executor's bookkeeping
in plain Python, the host time around a SmolLM2 batch-1 decode step (building the step, reading
its logits, choosing the token) went from ~380 to ~250 us of a ~6.7 ms step.

Only for engines with `logits_positions` or `logits_from` (their logits are (rows, K, V) for
K positions per row: K = 1 except in speculative verification, `positions` per row at most);
older engines keep the generic path.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

_LOGITS_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
CACHE_LINE = 64  # bytes; onnxruntime's own CPU allocations are aligned to it


def aligned_zeros(shape: tuple[int, ...], dtype, align: int = CACHE_LINE) -> np.ndarray:
    """A zeroed C-contiguous array whose first byte is `align`-aligned. numpy's (malloc's)
    large arrays start 16 bytes into a page, so a row of a (.., positions, 64) fp32 KV buffer
    straddled one more cache line than it holds and the kernels' 64-byte loads split."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    raw = np.zeros(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + nbytes].view(dtype).reshape(shape)


class HostStepIO:
    def __init__(self, session: ort.InferenceSession, slots: int, capacity: int, positions: int = 1) -> None:
        logits = next(o for o in session.get_outputs() if o.name == "logits")
        self.vocab = int(logits.shape[-1])
        self.logits_dtype = _LOGITS_DTYPES[logits.type]
        self.capacity = capacity
        self._ids = np.zeros(slots * capacity, np.int64)
        self._mask = np.zeros(slots * capacity, np.int64)
        self._columns = np.arange(capacity)  # a decode row's mask: columns < its length
        inputs = {i.name for i in session.get_inputs()}
        # each row's logits position (rows, 1), or one start for all rows (1,) on older engines
        self._select = "logits_positions" if "logits_positions" in inputs else "logits_from"
        self._positions = np.zeros(slots * positions, np.int64)
        self._logits = aligned_zeros((slots * positions * self.vocab,), self.logits_dtype)
        self._ptr = {name: a.ctypes.data for name, a in (("input_ids", self._ids), ("attention_mask", self._mask),
                                                          ("positions", self._positions), ("logits", self._logits))}
        self._bound: dict[ort.IOBinding, tuple] = {}  # binding -> the (ids, positions, mask) shapes bound

    @classmethod
    def supports(cls, session: ort.InferenceSession) -> bool:
        """Engines whose logits are (rows, 1, V) for every step, with a static vocabulary size."""
        inputs = {i.name for i in session.get_inputs()}
        logits = [o for o in session.get_outputs() if o.name == "logits"]
        return (("logits_positions" in inputs or "logits_from" in inputs) and "position_ids" not in inputs
                and len(logits) == 1
                and isinstance(logits[0].shape[-1], int) and logits[0].type in _LOGITS_DTYPES)

    def run(self, session: ort.InferenceSession, binding: ort.IOBinding, ids: np.ndarray,
            mask: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """Run one step; (rows, K, V) logits of each row's positions `positions[r]` ((rows, K);
        default: the last column, K = 1), a view valid until the next run."""
        rows, steps = ids.shape
        self._ids[:ids.size] = ids.ravel()
        self._mask[:mask.size] = mask.ravel()
        positions = np.full((rows, 1), steps - 1, np.int64) if positions is None else positions.reshape(rows, -1)
        width = positions.shape[1]
        if self._select == "logits_positions":
            self._positions[:positions.size] = positions.ravel()
        elif (positions != np.arange(steps - width, steps)).any():
            raise ValueError("this engine returns the same last positions of every row (logits_from)")
        else:
            self._positions[0] = steps - width
        self._bind(binding, ids.shape, width, mask.shape)
        session.run_with_iobinding(binding)
        return self._logits[:rows * width * self.vocab].reshape(rows, width, self.vocab)

    def decode(self, session: ort.InferenceSession, binding: ort.IOBinding, tokens: list[int],
               lengths: np.ndarray) -> np.ndarray:
        """One decode step: each row's new token, and its length with that token (rows,);
        (rows, 1, V) logits, a view valid until the next run. The mask is bound as wide as the
        cache (see the module's docstring)."""
        rows = len(tokens)
        self._ids[:rows] = tokens
        mask = self._mask[:rows * self.capacity].reshape(rows, self.capacity)
        np.less(self._columns, lengths[:, None], out=mask)
        self._positions[:rows] = 0  # the only new position of each row
        self._bind(binding, (rows, 1), 1, mask.shape)
        session.run_with_iobinding(binding)
        return self._logits[:rows * self.vocab].reshape(rows, 1, self.vocab)

    def _bind(self, binding: ort.IOBinding, ids_shape: tuple, width: int, mask_shape: tuple) -> None:
        """Bind the buffers' memory where the step's shapes differ from the binding's last ones."""
        bound_ids, bound_width, bound_mask = self._bound.get(binding, (None, None, None))
        if ids_shape != bound_ids or width != bound_width:
            binding.bind_input("input_ids", "cpu", 0, np.int64, ids_shape, self._ptr["input_ids"])
            shape = (ids_shape[0], width) if self._select == "logits_positions" else (1,)
            binding.bind_input(self._select, "cpu", 0, np.int64, shape, self._ptr["positions"])
            binding.bind_output("logits", "cpu", 0, self.logits_dtype, (ids_shape[0], width, self.vocab),
                                self._ptr["logits"])
        if mask_shape != bound_mask:
            binding.bind_input("attention_mask", "cpu", 0, np.int64, mask_shape, self._ptr["attention_mask"])
        self._bound[binding] = (ids_shape, width, mask_shape)
