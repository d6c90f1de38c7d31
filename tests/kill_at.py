"""`python -m tests.kill_at STAGE ARGS...`: run `optimize ARGS...`, killing this process with
SIGKILL partway through build stage STAGE (tests/test_build_faults.py), as the kernel's OOM
killer or a `kill -9` would: no exception handler, no cleanup runs."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

import optimizer.core.artifact as artifact
import optimizer.pipeline as pipeline


def die(*_, **__):
    os.kill(os.getpid(), signal.SIGKILL)


def after(calls: int, real):
    """`real`, except that call number `calls` (counting from 1) dies instead."""
    count = [0]

    def wrapped(*args, **kwargs):
        count[0] += 1
        if count[0] == calls:
            die()
        return real(*args, **kwargs)
    return wrapped


def half_replace(tmp: Path, out: Path) -> None:
    """artifact._replace over an existing engine, killed between its two renames."""
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / "engine")
    die()


# stage -> (module, attribute) patched to die; the write stage dies once model.onnx is staged,
# checksums after the first file, rename between moving the old engine aside and the new one in
STAGES = {
    "load": (pipeline, "load_model", die),
    "quantize": (pipeline, "quantize_model", die),
    "capture": (pipeline, "capture", die),
    "write": (pipeline, "write_tokenizer", die),
    "verify": (pipeline, "verify_engine", die),
    "checksum": (artifact, "sha256_file", after(2, artifact.sha256_file)),
    "rename": (artifact, "_replace", half_replace),
}

if __name__ == "__main__":
    module, name, replacement = STAGES[sys.argv[1]]
    setattr(module, name, replacement)
    from optimizer.cli import main

    main(sys.argv[2:])
