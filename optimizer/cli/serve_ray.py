"""`optimize serve`'s Ray Serve options: replicas, several engines, a Ray cluster
(runtime.ray_serve builds the application)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from optimizer.core.progress import console

_OPTIONS = [
    click.option("--replicas", default=None, type=int,
                 help="Serve through Ray Serve with this many replicas of each engine, each loading it in its own "
                      "process (--threads each; one GPU each with --provider cuda) [default: one process, no Ray]."),
    click.option("--engine", "engines", multiple=True, metavar="NAME=PATH[:WEIGHT]",
                 help="An engine served under model name NAME (repeatable, on Ray Serve): requests are routed by "
                      "their model; engines sharing a NAME split its traffic by WEIGHT (default 1)."),
    click.option("--ray-address", default=None,
                 help="Join this Ray cluster (e.g. ray://head:10001 or auto) [default: start a local one]."),
    click.option("--min-replicas", default=None, type=int, help="Autoscale each engine from this many replicas "
                                                                "(with --max-replicas)."),
    click.option("--max-replicas", default=None, type=int, help="... up to this many, by ongoing requests."),
    click.option("--max-ongoing-requests", default=32, show_default=True,
                 help="Requests one replica takes at once (Ray Serve queues the rest)."),
]


def ray_options(command: Callable) -> Callable:
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def wants_ray(args: dict[str, Any]) -> bool:
    return any(args.get(k) for k in ("replicas", "engines", "ray_address", "min_replicas", "max_replicas"))


def serve_on_ray(engine_dir: Path | None, model_name: str | None, host: str, port: int, threads: int | None,
                 provider: str, max_batch: int | None, prefill_chunk: int, prefix_caching: bool, verify: bool,
                 allow_failed_gate: bool, limits: Any, args: dict[str, Any], decode_steps: int = 1) -> None:
    """Start (or join) Ray, deploy the application, and serve until interrupted."""
    from runtime.ray_serve import EngineSpec, ReplicaOptions, build_application, parse_engine, require_ray

    engines = [parse_engine(t) for t in args["engines"]]
    if engine_dir is not None:
        engines.insert(0, EngineSpec(model_name or Path(engine_dir).resolve().name, str(engine_dir)))
    engines = [EngineSpec(e.name, str(Path(e.path).resolve()), e.weight) for e in engines]
    options = ReplicaOptions(replicas=args["replicas"] or 1, min_replicas=args["min_replicas"],
                             max_replicas=args["max_replicas"], max_ongoing_requests=args["max_ongoing_requests"],
                             threads=threads or 1, provider=provider, max_batch=max_batch,
                             prefill_chunk=prefill_chunk, prefix_caching=prefix_caching, verify=verify,
                             allow_failed_gate=allow_failed_gate, decode_steps=decode_steps)
    ray = require_ray()
    app = build_application(engines, options, limits)  # checks the engines before Ray starts
    from ray import serve

    ray.init(address=args["ray_address"], include_dashboard=False, log_to_driver=False,
             **({} if args["ray_address"] else {"num_cpus": _local_cpus(engines, options)}))
    serve.start(http_options={"host": host, "port": port})
    served = ", ".join(f"{e.name}={e.path}" + (f" (weight {e.weight:g})" if e.weight != 1 else "") for e in engines)
    scale = (f"{options.min_replicas}-{options.max_replicas} replicas (autoscaled)" if options.max_replicas
             else f"{options.replicas} replica(s)")
    console().print(f"serving on Ray Serve: {served}; {scale} each, {options.threads} thread(s) a replica, "
                    f"on http://{host}:{port}/v1")
    try:
        serve.run(app, name="optimizer", route_prefix="/", blocking=True)
    finally:
        serve.shutdown()
        ray.shutdown()


def _local_cpus(engines: list, options: Any) -> int:
    """A local cluster big enough for every replica (Ray counts CPUs as slots, not cores)."""
    import os

    replicas = options.max_replicas or options.replicas
    return max(os.cpu_count() or 1, len(engines) * replicas * (options.threads if options.provider != "cuda" else 0) + 1)
