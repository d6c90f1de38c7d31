"""Replicas and several engines behind one endpoint, on Ray Serve.

    optimize serve ENGINE --replicas 2                       # the CLI (optimizer/cli/serve_ray.py)
    serve run runtime.ray_serve:build engines=tiny=/path/engine replicas=2   # Ray's own CLI

The application is two deployments' kinds:

* one `EngineReplica` deployment per engine (`--engine NAME=PATH[:WEIGHT]`, repeatable), with
  N replicas (or autoscaling bounds); each replica loads the engine and runs the very app
  `optimize serve` runs (runtime.server.create_app, limits and API keys included), one GPU a
  replica where the provider is cuda, `threads` CPUs otherwise;
* one `Router` behind Ray Serve's HTTP proxy: it reads the request's `model`, picks an engine
  of that name (weighted; `route` is the hook), and streams the replica's response back.
  /v1/models lists every name, /health asks every engine, /metrics joins every replica's
  series, each labelled with model, engine and replica.

A replica that dies is restarted by Ray. A request it held is retried on another replica
while nothing of its response has reached the client; a stream it was writing ends with an
SSE error event (`{"error": {...}}`) and no [DONE].
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from optimizer.core.errors import InputError

INSTALL_HINT = 'pip install "optimizer[serve-ray]"  (or: pip install "ray[serve]")'
METRICS_BOARD = "optimizer-serve-metrics"  # the named actor replicas post their /metrics text to
METRICS_PUSH_SECONDS = 1.0
METRICS_STALE_SECONDS = 5.0  # a replica silent this long (dead, restarted) drops out of /metrics
MAX_ATTEMPTS = 3  # tries of one request while nothing of it has reached the client
_HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding"}


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """One engine served: clients ask for it by `name`; `weight` splits the traffic between
    engines sharing a name (A/B, canary)."""
    name: str
    path: str
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class ReplicaOptions:
    """How each replica runs its engine, and how many replicas there are."""
    replicas: int = 1
    min_replicas: int | None = None  # with max_replicas: autoscale between them instead of `replicas`
    max_replicas: int | None = None
    max_ongoing_requests: int = 32  # per replica; Ray queues (or refuses) the rest
    threads: int = 1
    provider: str = "cpu"
    max_batch: int | None = None
    prefill_chunk: int = 256
    prefix_caching: bool = True
    verify: bool = True
    allow_failed_gate: bool = False
    decode_steps: int = 1  # greedy decode steps per host round trip (runtime.multi_step; serving: 1)


# Routing hook: (requested model, the engines of that name, the request body) -> the one to use.
Route = Callable[[str, Sequence[EngineSpec], dict], EngineSpec]


def parse_engine(text: str) -> EngineSpec:
    """`NAME=PATH` or `NAME=PATH:WEIGHT` (WEIGHT a positive number)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise InputError(f"--engine {text!r}: expected NAME=PATH or NAME=PATH:WEIGHT (e.g. small=engines/smol:3)")
    path, weight = rest, 1.0
    head, colon, tail = rest.rpartition(":")
    if colon and head:
        try:
            weight = float(tail)
        except ValueError:
            pass  # a colon inside the path, not a weight
        else:
            path = head
            if not weight > 0:
                raise InputError(f"--engine {text!r}: the weight must be a positive number, not {tail!r}")
    return EngineSpec(name, path, weight)


def weighted_route(model: str, engines: Sequence[EngineSpec], body: dict, rng: random.Random | None = None) -> EngineSpec:
    """The default route: an engine of the requested name, drawn in proportion to its weight."""
    return (rng or random).choices(list(engines), weights=[e.weight for e in engines])[0]


def served_names(engines: Sequence[EngineSpec]) -> list[str]:
    return list(dict.fromkeys(e.name for e in engines))


def deployment_name(index: int, spec: EngineSpec) -> str:
    return f"engine{index}-{''.join(c if c.isalnum() or c in '-_' else '_' for c in spec.name)}"


def relabel_metrics(text: str, labels: dict[str, str]) -> list[str]:
    """Prometheus exposition lines with `labels` added to every sample (comments dropped: the
    joined view writes one # TYPE line per metric family itself)."""
    extra = ",".join(f'{k}="{v}"' for k, v in labels.items())
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, brace, rest = line.partition("{")
        if brace:
            out.append(f"{name}{{{extra},{rest}" if not rest.startswith("}") else f"{name}{{{extra}{rest}")
        else:
            metric, _, value = line.partition(" ")
            out.append(f"{metric}{{{extra}}} {value}")
    return out


def join_metrics(posts: Sequence[tuple[dict[str, str], str]]) -> str:
    """One exposition from several replicas' texts: each family's # HELP/# TYPE once, then its
    samples from every replica, labelled."""
    meta: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for labels, text in posts:
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                family = line.split(" ")[2]
                if line not in meta.setdefault(family, []):
                    meta[family].append(line)
        for line in relabel_metrics(text, labels):
            samples.setdefault(_family(line.partition("{")[0], meta), []).append(line)
    lines = []
    for family in dict.fromkeys([*meta, *samples]):
        lines += meta.get(family, []) + samples.get(family, [])
    return "\n".join(lines) + "\n"


def _family(metric: str, meta: dict[str, list[str]]) -> str:
    for suffix in ("_bucket", "_sum", "_count", "_total", "_created"):
        if metric.endswith(suffix) and metric[: -len(suffix)] in meta:
            return metric[: -len(suffix)]
    return metric


def require_ray() -> Any:
    try:
        import ray
        from ray import serve  # noqa: F401
    except ImportError as e:
        raise InputError(f"serving replicas (--replicas, --engine, --ray-address) needs Ray Serve, which is not "
                         f"installed: {INSTALL_HINT}") from e
    return ray


def check_specs(engines: Sequence[EngineSpec], options: ReplicaOptions) -> None:
    """Refuse a bad configuration before Ray starts anything."""
    if not engines:
        raise InputError("no engine to serve: give ENGINE_DIR or --engine NAME=PATH")
    for e in engines:
        if not (Path(e.path) / "manifest.json").is_file():
            raise InputError(f"--engine {e.name}={e.path}: no engine there (no manifest.json); build one with "
                             f"`optimize model ... --out DIR`")
        gate = json.loads((Path(e.path) / "manifest.json").read_text()).get("gate")
        if gate and not gate.get("passed", True) and not options.allow_failed_gate:
            raise InputError(f"refusing to serve {e.path}: its manifest fails its accuracy gate; rebuild with a "
                             f"better quantization, or pass --allow-failed-gate to serve it anyway")
    if options.replicas < 1:
        raise InputError(f"--replicas must be at least 1, not {options.replicas}")
    if (options.min_replicas is None) != (options.max_replicas is None):
        raise InputError("autoscaling takes both --min-replicas and --max-replicas")
    if options.min_replicas is not None and not 0 <= options.min_replicas <= options.max_replicas >= 1:
        raise InputError(f"--min-replicas {options.min_replicas} / --max-replicas {options.max_replicas}: need "
                         f"0 <= min <= max and max >= 1")
    if options.max_ongoing_requests < 1:
        raise InputError("--max-ongoing-requests must be at least 1")


# -- the Ray side -------------------------------------------------------------------------------
def build_application(engines: Sequence[EngineSpec], options: ReplicaOptions, limits: Any = None,
                      route: Route = weighted_route) -> Any:
    """The Ray Serve application (serve.run it): one deployment per engine, and the router."""
    check_specs(engines, options)
    require_ray()
    replica_cls, router_cls = _deployments()
    handles = []
    for i, spec in enumerate(engines):
        scale: dict[str, Any] = {"num_replicas": options.replicas}
        if options.max_replicas is not None:
            scale = {"autoscaling_config": {"min_replicas": options.min_replicas,
                                            "max_replicas": options.max_replicas,
                                            "target_ongoing_requests": max(1, options.max_ongoing_requests // 2)}}
        actor = {"num_gpus": 1} if options.provider == "cuda" else {"num_cpus": options.threads}
        handles.append(replica_cls.options(name=deployment_name(i, spec), max_ongoing_requests=options.max_ongoing_requests,
                                           ray_actor_options=actor, health_check_period_s=2,
                                           health_check_timeout_s=10, **scale)
                       .bind(spec, options, limits))
    total = options.max_replicas or options.replicas
    return router_cls.options(max_ongoing_requests=max(100, 4 * total * options.max_ongoing_requests),
                              ray_actor_options={"num_cpus": 0}).bind(list(engines), handles, route, limits)


def build(args: dict[str, str]) -> Any:
    """Application builder for Ray's CLI: `serve run runtime.ray_serve:build engines=a=/p,b=/q:2
    replicas=2 threads=1 provider=cpu max_ongoing_requests=32 min_replicas=1 max_replicas=4`
    (or the same keys under `args:` in a Serve config YAML)."""
    known = {f.name for f in dataclasses.fields(ReplicaOptions)}
    unknown = set(args) - known - {"engines"}
    if unknown:
        raise InputError(f"unknown argument(s) {sorted(unknown)}; known: engines, {', '.join(sorted(known))}")
    fields = {f.name: f for f in dataclasses.fields(ReplicaOptions)}
    values: dict[str, Any] = {}
    for key, raw in args.items():
        if key == "engines":
            continue
        kind = str(fields[key].type)
        raw = str(raw)
        values[key] = (raw.lower() in ("1", "true", "yes") if kind == "bool" else
                       int(raw) if "int" in kind else raw)
    engines = [parse_engine(t) for t in str(args.get("engines", "")).split(",") if t]
    return build_application(engines, ReplicaOptions(**values))


def _deployments() -> tuple[Any, Any]:
    """The two deployment classes (defined here so that importing this module needs no Ray)."""
    import ray
    from ray import serve
    from ray.exceptions import RayActorError

    try:
        from ray.serve.exceptions import DeploymentUnavailableError
        retryable: tuple = (RayActorError, DeploymentUnavailableError)
    except ImportError:  # older Ray
        retryable = (RayActorError,)

    @ray.remote(num_cpus=0)
    class MetricsBoard:
        """Each replica's latest /metrics text, posted every METRICS_PUSH_SECONDS."""

        def __init__(self) -> None:
            self.posts: dict[str, tuple[float, dict[str, str], str]] = {}

        def post(self, replica: str, labels: dict[str, str], text: str) -> None:
            self.posts[replica] = (time.time(), labels, text)

        def read(self) -> list[tuple[dict[str, str], str]]:
            now = time.time()
            return [(labels, text) for at, labels, text in self.posts.values() if now - at < METRICS_STALE_SECONDS]

    def board() -> Any:
        return MetricsBoard.options(name=METRICS_BOARD, get_if_exists=True, lifetime="detached",
                                     namespace="optimizer-serve").remote()

    @serve.deployment
    class EngineReplica:
        def __init__(self, spec: EngineSpec, options: ReplicaOptions, limits: Any) -> None:
            self.spec = spec
            self.app, self.server = load_app(spec, options, limits)
            context = serve.get_replica_context()
            self.replica = context.replica_id.unique_id
            self.labels = {"model": spec.name, "engine": context.deployment, "replica": self.replica}
            self.board = board()
            self.stopping = threading.Event()
            threading.Thread(target=self._post_metrics, daemon=True, name="metrics-post").start()

        def _post_metrics(self) -> None:
            while not self.stopping.wait(METRICS_PUSH_SECONDS):
                try:
                    text = self.server.metrics.render()
                    text = text.decode() if isinstance(text, bytes) else text
                    ray.get(self.board.post.remote(self.replica, self.labels, text), timeout=10)
                except Exception:  # the board restarting: post again next time
                    pass

        async def handle(self, method: str, path: str, query: str, headers: list, body: bytes):
            from runtime.asgi_call import call_asgi

            async for part in call_asgi(self.app, method, path, query, headers, body):
                yield part

        def healthy(self) -> bool:
            return self.server.alive

        def state(self) -> dict[str, Any]:
            """For tests and the soak: the process, and what its engine holds now."""
            import os
            llm = self.server.llm
            return {"pid": os.getpid(), "replica": self.replica, "cache_used": int(llm.scheduler.pool.used),
                    "sequences": len(llm.sequences)}

        def check_health(self) -> None:  # Ray Serve's health check: a stopped engine loop restarts the replica
            if not self.server.alive:
                raise RuntimeError("the engine loop stopped")

        def __del__(self) -> None:
            self.stopping.set()
            self.server.shutdown()

    @serve.deployment
    class Router:
        def __init__(self, engines: list[EngineSpec], handles: list[Any], route: Route, limits: Any) -> None:
            from runtime.server_limits import LimitsMiddleware, ServerLimits

            self.engines, self.handles, self.route = engines, handles, route
            self.names = served_names(engines)
            self.board = board()
            self.limits = limits or ServerLimits()
            self.gate = LimitsMiddleware(None, self.limits, 1)  # its API-key check, for the router's own answers

        async def __call__(self, request: Any) -> Any:
            from starlette.responses import JSONResponse, Response

            from runtime.server_limits import LimitError

            path, method = request.url.path, request.method
            try:  # the replicas check keys too; the router's own answers (models, metrics, 404s) need them here
                self.gate.authenticate(request.scope, path)
            except LimitError as e:
                return JSONResponse(json.loads(e.body()), status_code=e.status,
                                    headers={"www-authenticate": "Bearer"} if e.status == 401 else None)
            if method == "GET" and path in ("/v1/models", "/models"):
                return JSONResponse({"object": "list", "data": [{"id": n, "object": "model", "created": 0,
                                                                  "owned_by": "optimizer"} for n in self.names]})
            if method == "GET" and path == "/health":
                return await self._health()
            if method == "GET" and path == "/metrics":
                posts = await self.board.read.remote()
                return Response(join_metrics(posts), media_type="text/plain; version=0.0.4")
            body = await request.body()
            if len(body) > self.limits.max_body_bytes:
                return JSONResponse({"error": {"message": f"the request body is larger than this server's limit of "
                                                          f"{self.limits.max_body_bytes} bytes", "param": None,
                                               "type": "invalid_request_error", "code": "request_too_large"}},
                                    status_code=413)
            index = self._pick(body)
            if isinstance(index, Response):
                return index
            headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS]
            return await self._forward(index, method, path, request.url.query, headers, body)

        def _pick(self, body: bytes) -> Any:
            """The engine for this body: by its model; the first engine when there is no model to read
            (its app then answers the error a single server would)."""
            from starlette.responses import JSONResponse

            try:
                data = json.loads(body) if body else None
            except (ValueError, UnicodeDecodeError):
                data = None
            model = data.get("model") if isinstance(data, dict) else None
            if not isinstance(model, str):
                return 0
            candidates = [e for e in self.engines if e.name == model]
            if not candidates:
                return JSONResponse({"error": {"message": f"the model {model!r} does not exist here; this server "
                                                          f"serves: {', '.join(self.names)}",
                                               "type": "invalid_request_error", "param": "model",
                                               "code": "model_not_found"}}, status_code=404)
            chosen = self.route(model, candidates, data)
            # the hook's pick, its body sent as is: its app must serve `model` by name
            return next(i for i, e in enumerate(self.engines) if e is chosen or e == chosen)

        async def _health(self) -> Any:
            from starlette.responses import JSONResponse

            states = {}
            for spec, handle in zip(self.engines, self.handles):
                try:
                    ok = await asyncio.wait_for(handle.healthy.remote(), 10)
                except Exception as e:  # noqa: BLE001 - any failure is "unhealthy", with its reason
                    ok, states[spec.name] = False, f"unavailable: {type(e).__name__}"
                if spec.name not in states:
                    states[spec.name] = "ok" if ok else "engine loop stopped"
            good = all(s == "ok" for s in states.values())
            return JSONResponse({"status": "ok" if good else "degraded", "engines": states},
                                status_code=200 if good else 503)

        async def _forward(self, index: int, method: str, path: str, query: str, headers: list, body: bytes) -> Any:
            from starlette.responses import Response, StreamingResponse

            handle = self.handles[index].options(stream=True)
            last: Exception | None = None
            for _ in range(MAX_ATTEMPTS):
                stream = handle.handle.remote(method, path, query, headers, body)
                start = None
                try:
                    start = await stream.__anext__()
                    streaming = any(k.lower() == "content-type" and v.startswith("text/event-stream")
                                    for k, v in start["headers"])
                    if not streaming:  # a whole response: read all of it, so a death in between retries
                        chunks = [chunk async for chunk in stream]
                        return Response(b"".join(chunks), status_code=start["status"],
                                        headers=_plain_headers(start["headers"]))
                    first = await stream.__anext__()
                except StopAsyncIteration:  # a response without a body (or, with no start, a broken app)
                    if start is None:
                        return _unavailable("the replica ended the request without a response; try again")
                    return Response(status_code=start["status"], headers=_plain_headers(start["headers"]))
                except retryable as e:
                    last = e
                    continue
                return StreamingResponse(_relay(first, stream, retryable), status_code=start["status"],
                                         headers=_plain_headers(start["headers"]), media_type="text/event-stream")
            return _unavailable(f"the replicas serving {self.engines[index].name!r} failed {MAX_ATTEMPTS} times "
                                f"in a row ({type(last).__name__}); try again")

    return EngineReplica, Router


async def _relay(first: bytes, stream: Any, retryable: tuple) -> Any:
    yield first
    try:
        async for chunk in stream:
            yield chunk
    except retryable as e:
        error = {"error": {"message": f"the replica serving this request died mid-stream ({type(e).__name__}); "
                                      f"the text above is partial; send the request again",
                           "type": "server_error", "param": None, "code": "replica_died"}}
        yield ("data: " + json.dumps(error) + "\n\n").encode()


def _plain_headers(headers: list) -> dict[str, str]:
    return {k: v for k, v in headers if k.lower() not in _HOP_HEADERS}


def _unavailable(message: str) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": "server_error", "param": None,
                                   "code": "replica_unavailable"}}, status_code=503, headers={"retry-after": "1"})


def load_app(spec: EngineSpec, options: ReplicaOptions, limits: Any) -> tuple[Any, Any]:
    """Load one engine the way `optimize serve` does and return (its FastAPI app, its AsyncEngine)."""
    from runtime import Engine
    from runtime.async_engine import AsyncEngine
    from runtime.server import create_app

    engine = Engine.load(Path(spec.path), provider=options.provider, threads=options.threads, verify=options.verify)
    llm = engine.llm(max_batch=options.max_batch, prefill_chunk=options.prefill_chunk,
                     prefix_caching=options.prefix_caching, decode_steps=options.decode_steps)
    server = AsyncEngine(llm).start()
    return create_app(engine, server, spec.name, limits), server
