"""`optimize serve`'s limit options, made from runtime.server_limits.ServerLimits' fields (each
limit declared once there, with its default and help)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import click

from runtime.server_limits import ServerLimits, limit_fields

_TYPES = {"int": int, "int | None": int, "float": float, "Path | None": click.Path(path_type=Path, dir_okay=False)}


def limit_options(command: Callable) -> Callable:
    """Add one click option per ServerLimits field to `command` (its keyword arguments)."""
    for f in reversed(limit_fields()):
        meta, default = f.metadata, f.default
        kwargs: dict[str, Any] = {"help": meta["help"], "default": default}
        if meta.get("multiple"):
            kwargs.update(multiple=True, envvar=meta.get("envvar"), default=())
        elif f.type == "bool":
            kwargs["show_default"] = True
        else:
            kwargs.update(type=_TYPES[f.type], show_default=default is not None and default != ())
        command = click.option(meta["flag"], f.name, **kwargs)(command)
    return command


def server_limits(args: dict[str, Any]) -> ServerLimits:
    """The limits from the options' values (the keys read from --api-key-file at once, so a bad
    file is an error before the engine loads)."""
    names = {f.name for f in limit_fields()}
    limits = ServerLimits(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in args.items() if k in names})
    keys = limits.keys()
    return dataclasses.replace(limits, api_keys=keys, api_key_file=None)
