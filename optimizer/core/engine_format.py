"""The engine format: what an engine directory's manifest.json promises, typed, in one place.

The builder writes it (`optimizer.pipeline`), the runtime, `optimize inspect` and the reports
read it. `optimizer.core.artifact` writes and checks the file itself (format version,
checksums); this module says what the sections mean.

Format versions (`FORMAT_VERSION`; an engine of any version in `READABLE` loads):

  1  the first format. The paged layout names its sequences `max_sequences`; static-layout
     graphs take `logits_from` (one start position for every row).
  2  the paged layout names them `slots`, like the static one; static-layout graphs take
     `logits_positions` (each row's positions), and graphs output `greedy_tokens`. The
     runtime reads either graph interface by its input and output names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from optimizer.core.errors import EngineError

FORMAT_VERSION = 2
READABLE = (1, 2)
MANIFEST = "manifest.json"
LAYOUTS = ("concat", "static", "paged")  # the KV-cache interfaces an engine can have
ATTENTION = ("unfused", "GroupQueryAttention", "PagedAttention", "CachedAttention")
# Attention kinds with GroupQueryAttention's contract: right-padded rows, a static cache written in
# place (CachedAttention: our op, runtime/custom_ops, in custom-ops engines).
IN_PLACE_ATTENTION = ("GroupQueryAttention", "CachedAttention")
_SIZES = {"static": ("slots", "slot_capacity"),  # the sizes each layout must record
          "paged": ("slots", "block_size", "num_blocks", "max_blocks_per_sequence")}


def flash_paged_block(head_dim: int) -> int:
    """The block sizes (multiples of this) for which onnxruntime 1.31's PagedAttention reads a
    paged cache in place with flash attention: its flash kernel's key tile must not straddle a
    block (kBlockN: 256 up to head size 64, 128 up to 128, 64 above; read in onnxruntime's
    paged_attention.cc). The paged layout's default block size. At head size 128 its fp8 cache
    also needs pages of 128 tokens for the XQA decode kernel. Measured on an H200 (session 36,
    Llama-3.1-8B shape, 512 requests): blocks of 128 against 16 gave 14,347 against 12,807 out
    tok/s at 128/128, 1,524 against 699 at 2048/128, and 14,149 against 5,305 with the fp8 cache."""
    return 256 if head_dim <= 64 else 128 if head_dim <= 128 else 64


@dataclass(frozen=True)
class KvCacheSpec:
    """The manifest's `kv_cache` section: the cache interface of the graph and its sizes.

    - concat: past (B, n_kv, P, hd) in, present (B, n_kv, P + S, hd) out. Unfused attention
      takes any mask (left padding); GroupQueryAttention reads row lengths from the mask, so
      its batches are right-padded.
    - static: `slots` buffers of `slot_capacity` positions per layer and K/V, bound as past
      and present, written in place.
    - paged: a pool of `num_blocks` blocks of `block_size` tokens, shared by up to `slots`
      sequences through block tables.
    Fused engines' rotary caches end at `max_sequence_length`."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str  # fp32 | fp16 | int8 | fp8 (a quantized cache: `quantization` says how)
    past_key: str  # graph input / output names, with {i} for the layer
    past_value: str
    present_key: str
    present_value: str
    attention: str = "unfused"
    max_sequence_length: int | None = None
    layout: str = "concat"
    slots: int | None = None  # static / paged: sequences batched together
    slot_capacity: int | None = None  # static: positions per slot
    block_size: int | None = None  # paged: tokens per block
    num_blocks: int | None = None  # paged: blocks in the pool
    max_blocks_per_sequence: int | None = None  # paged: block-table width
    sliding_windows: tuple[int | None, ...] = ()  # per layer; None: global attention
    padding: str = "left"  # right where attention is fused
    quantization: dict[str, Any] | None = None  # int8 / fp8 cache: format, calibration, scales

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise EngineError(f"KV-cache layout {self.layout!r} is not supported by this runtime",
                              hint="supported: " + ", ".join(LAYOUTS) + "; rebuild the engine with this version")
        if self.attention not in ATTENTION:
            raise EngineError(f"attention kind {self.attention!r} is not one this runtime knows",
                              hint="known: " + ", ".join(ATTENTION) + "; rebuild the engine with this version")
        missing = [name for name in _SIZES.get(self.layout, ()) if getattr(self, name) is None]
        if missing:
            raise EngineError(f"the {self.layout} KV-cache section lacks " + ", ".join(missing),
                              hint="the manifest is incomplete: rebuild the engine")

    def to_manifest(self) -> dict[str, Any]:
        """The JSON section: every field, except sizes that the layout does not have."""
        section = asdict(self)
        section["sliding_windows"] = list(self.sliding_windows)
        for name in ("slots", "slot_capacity", "block_size", "num_blocks", "max_blocks_per_sequence"):
            if name not in _SIZES.get(self.layout, ()):
                del section[name]
        if self.quantization is None:
            del section["quantization"]
        return section

    @classmethod
    def from_manifest(cls, section: dict[str, Any], version: int = FORMAT_VERSION) -> "KvCacheSpec":
        """Read a `kv_cache` section written in format `version`."""
        section = dict(section)
        if version == 1 and "max_sequences" in section:  # format 1 named the paged layout's slots so
            section["slots"] = section.pop("max_sequences")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise EngineError("the manifest's kv_cache section has keys this runtime does not know: "
                              + ", ".join(unknown), hint="upgrade optimizer, or rebuild the engine with this version")
        if "sliding_windows" in section:
            section["sliding_windows"] = tuple(section["sliding_windows"] or ())
        try:
            return cls(**section)
        except TypeError as e:  # a required key is missing
            raise EngineError(f"the manifest's kv_cache section is incomplete ({e})",
                              hint="rebuild the engine with this version") from None


def check_version(version: Any, where: str, reader_version: str) -> int:
    """The manifest's format version, if this optimizer reads it; a clear error otherwise."""
    if not isinstance(version, int) or isinstance(version, bool):
        raise EngineError(f"{where} has no integer format_version",
                          hint="the engine is corrupt: rebuild it with `optimize model`")
    if version > FORMAT_VERSION:
        raise EngineError(f"engine format version {version} is newer than this optimizer "
                          f"({reader_version}) reads (up to {FORMAT_VERSION})",
                          hint="upgrade optimizer, or rebuild the engine with this version")
    if version not in READABLE:
        raise EngineError(f"engine format version {version} is no longer read by this optimizer "
                          f"(it reads {', '.join(map(str, READABLE))})",
                          hint="rebuild the engine with this version")
    return version
