"""The layering: import-linter's contracts (pyproject.toml) hold, and they name every module of
optimizer/ above its ground floor (optimizer.core), so a new module cannot slip past them."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import optimizer

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_contracts_name_every_module_above_the_ground_floor():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    above = {f"optimizer.{m.name}" for m in pkgutil.iter_modules(optimizer.__path__) if m.name != "core"}
    for contract in config["contracts"]:
        if "optimizer.core" in contract["source_modules"] or "runtime" in contract["source_modules"]:
            named = {m for m in contract["forbidden_modules"] if m.startswith("optimizer.")}
            assert named == above, (contract["name"], sorted(above ^ named))
