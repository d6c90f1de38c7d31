"""The engine directory: versioned manifest, checksums, atomic write, verified load.

Layout:
    engine/
      manifest.json            format version, source identity, architecture, dtype,
                               quantization, passes, KV-cache layout, tool versions,
                               sha256 + size of every other file
      model.onnx               the graph (weights inline when small)
      model.onnx.data          the weights, when large (ONNX external data)
      tokenizer.json ...       tokenizer files (transformers' save_pretrained)
      generation_config.json

An engine is built in a hidden temporary directory beside the target and renamed into place
only once complete and verified: an interrupted build leaves no directory that loads (the
temporary one has no manifest until the very end, and is removed on any error).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from optimizer import __version__
from optimizer.core.engine_format import FORMAT_VERSION, MANIFEST, KvCacheSpec, check_version
from optimizer.core.errors import EngineError, InputError
from optimizer.core.hashing import sha256_file
from optimizer.core.progress import bar


@dataclass(frozen=True)
class EngineDir:
    path: Path
    manifest: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest["model"]["file"]

    @property
    def format_version(self) -> int:
        return self.manifest["format_version"]

    @property
    def kv_cache(self) -> KvCacheSpec:
        """The cache interface (optimizer.core.engine_format), read in the engine's format version."""
        return KvCacheSpec.from_manifest(self.manifest["kv_cache"], self.format_version)

    @property
    def has_tokenizer(self) -> bool:
        return bool(self.manifest.get("tokenizer", {}).get("files"))


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Fail early, before any expensive work, when `out` cannot be written."""
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {out} exists and is not a directory",
                         hint="choose another --out path")
    if out.exists() and not overwrite:
        raise InputError(f"output directory {out} already exists",
                         hint="pass --overwrite to replace it, or choose another --out path")


@contextmanager
def staging_dir(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield an empty temporary directory beside `out`; on success rename it to `out`.

    On any exception (Ctrl-C included) the temporary directory is removed and `out`, if it
    existed, is left untouched."""
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; an engine is an ordinary folder
        _replace(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InputError(f"no space left on the device while writing the engine beside {out} ({exc})",
                             hint="free some space or choose an --out path on another disk; nothing was "
                                  "written") from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / "engine")
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old / "engine", out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_manifest(directory: Path, manifest: dict[str, Any], quiet: bool = False) -> dict[str, Any]:
    """Checksum every file in `directory`, then write manifest.json (always the last file)."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    total = sum(p.stat().st_size for p in files)
    entries = {}
    with bar("checksums (MB)", total / 1e6, quiet) as advance:
        for p in files:
            entries[p.relative_to(directory).as_posix()] = {
                "sha256": sha256_file(p, lambda n: advance(n / 1e6)), "size": p.stat().st_size}
    full = {"format_version": FORMAT_VERSION, "tool": {"name": "optimizer", "version": __version__},
            **manifest, "files": entries}
    (directory / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
    return full


def load_engine(path: str | Path, verify: bool = True, quiet: bool = True) -> EngineDir:
    """Open an engine directory: check its format version and (by default) every checksum."""
    path = Path(path).expanduser()
    if not path.exists():
        raise EngineError(f"engine directory does not exist: {path}",
                          hint="build one with: optimize model <model> --out " + str(path))
    manifest_path = path / MANIFEST
    if not path.is_dir() or not manifest_path.is_file():
        raise EngineError(f"{path} is not an engine directory: no {MANIFEST}",
                          hint="pass a directory written by `optimize model --out`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise EngineError(f"{manifest_path} is not valid JSON ({exc})",
                          hint="the engine is corrupt: rebuild it with `optimize model`") from exc
    if not isinstance(manifest, dict):
        raise EngineError(f"{manifest_path} is not a JSON object",
                          hint="the engine is corrupt: rebuild it with `optimize model`")
    check_version(manifest.get("format_version"), str(manifest_path), __version__)
    check_manifest_fields(manifest, manifest_path)
    if verify:
        verify_checksums(path, manifest, quiet)
    return EngineDir(path=path, manifest=manifest)


def check_manifest_fields(manifest: dict[str, Any], manifest_path: Path) -> None:
    """The sections a reader indexes exist with their types, and every file named lies inside
    the engine directory (no absolute paths, no `..`)."""
    def bad(what: str) -> EngineError:
        return EngineError(f"{manifest_path} is incomplete or corrupt: {what}",
                           hint="rebuild the engine with `optimize model`")

    for key in ("model", "files", "kv_cache", "architecture", "generation"):
        if not isinstance(manifest.get(key), dict):
            raise bad(f"no {key!r} section")
    model_file = manifest["model"].get("file")
    for rel, entry in [(model_file, None), *manifest["files"].items()]:
        if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise bad(f"file name {rel!r} does not name a file inside the engine")
        if entry is not None and not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                                      and isinstance(entry.get("size"), int)):
            raise bad(f"the entry of {rel!r} has no sha256 and size")


def verify_checksums(path: Path, manifest: dict[str, Any], quiet: bool = True) -> None:
    entries = manifest.get("files", {})
    total = sum(e["size"] for e in entries.values())
    with bar("verifying checksums (MB)", total / 1e6, quiet) as advance:
        for rel, entry in entries.items():
            file = path / rel
            if not file.is_file():
                raise EngineError(f"engine file missing: {file}",
                                  hint="the engine is incomplete: rebuild it with `optimize model`")
            digest = sha256_file(file, lambda n: advance(n / 1e6))
            if digest != entry["sha256"]:
                raise EngineError(f"engine file {file} fails its checksum "
                                  f"(manifest {entry['sha256'][:12]}..., file {digest[:12]}...)",
                                  hint="the file was modified or corrupted: rebuild the engine")
