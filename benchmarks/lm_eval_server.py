"""lm-evaluation-harness through `optimize serve` against lm-eval on transformers, same model and
tasks: the accuracy must be the same (fp32 engine: the same choice on every item, the same
generated text), and the loglikelihoods equal up to the engine's numerical difference.

    python benchmarks/lm_eval_server.py --engine ENGINE --hf HF_MODEL --out DIR [--cloze 40 --topic 20]
        [--batch-size 1] [--num-concurrent 1]

ENGINE: an fp32 engine (`optimize model MODEL --out ENGINE`); HF_MODEL: the same model for
transformers (a folder, or the GGUF file itself, which transformers dequantizes). The tasks
(benchmarks/lm_eval_tasks.py) are written into a temporary folder from the packaged text
(`optimize asset text`; extracts of it are not kept). The engine is served by `optimize serve`
on a free localhost port; lm-eval runs as `local-completions` with nothing but the server's URL
(its tokenizer comes from the server's /tokenize: tokenizer_backend=auto finds it), then as `hf`
on HF_MODEL (dtype float32, CPU). Results: DIR/results.json (with the command line): each run's
metrics and wall seconds, and per task how many items picked / generated the same.
"""

from __future__ import annotations

import argparse
import json
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_eval_tasks import TASKS, write_tasks  # noqa: E402


def run_lm_eval(model: str, model_args: dict[str, Any], include_path: Path, batch_size: int = 1) -> dict:
    """One lm-eval run of both tasks, in this process; its results with every sample."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(model=model, model_args=model_args, tasks=list(TASKS), batch_size=batch_size,
                           task_manager=TaskManager(include_path=str(include_path)), log_samples=True,
                           device="cpu", bootstrap_iters=0)


def metrics(results: dict) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} (lm-eval's 'acc,none' keys without the filter, stderr left out)."""
    return {task: {k.split(",")[0]: v for k, v in values.items() if "," in k and "stderr" not in k}
            for task, values in results["results"].items()}


def per_item(results: dict) -> dict[str, list[dict[str, Any]]]:
    """Each item of each task, by doc_id: the choices' loglikelihoods and the pick (multiple
    choice), or the generated text (generate_until)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for task, samples in results["samples"].items():
        items = []
        for s in sorted(samples, key=lambda s: s["doc_id"]):
            if s["doc"].get("choices") is not None:  # multiple choice: one loglikelihood per choice
                lls = [float(r[0][0]) for r in s["resps"]]
                items.append({"doc_id": s["doc_id"], "lls": lls, "pick": max(range(len(lls)), key=lls.__getitem__)})
            else:
                items.append({"doc_id": s["doc_id"], "text": s["resps"][0][0]})
        out[task] = items
    return out


def compare(served: dict, reference: dict) -> dict[str, Any]:
    """Per task: how many items picked / generated the same, the largest loglikelihood difference."""
    a, b = per_item(served), per_item(reference)
    report: dict[str, Any] = {}
    for task in sorted(a):
        pairs = list(zip(a[task], b[task], strict=True))
        row: dict[str, Any] = {"items": len(pairs)}
        if "lls" in pairs[0][0]:
            row["same_pick"] = sum(x["pick"] == y["pick"] for x, y in pairs)
            row["max_abs_ll_diff"] = max(abs(u - v) for x, y in pairs for u, v in zip(x["lls"], y["lls"], strict=True))
        else:
            row["same_text"] = sum(x["text"] == y["text"] for x, y in pairs)
            row["differing"] = [{"doc_id": x["doc_id"], "served": x["text"], "reference": y["text"]}
                                for x, y in pairs if x["text"] != y["text"]]
        report[task] = row
    return report


def hf_args(model: Path) -> dict[str, str]:
    """lm-eval's `hf` model arguments for a transformers folder or a GGUF file (fp32 on the CPU)."""
    if model.suffix == ".gguf":  # transformers dequantizes it, as `optimize model` does
        return {"pretrained": str(model.parent), "gguf_file": model.name, "dtype": "float32"}
    return {"pretrained": str(model), "dtype": "float32"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def optimize_serve(engine: Path, port: int) -> Iterator[str]:
    """`optimize serve ENGINE` on localhost:port until the block ends; yields its base URL."""
    proc = subprocess.Popen([sys.executable, "-m", "optimizer.cli", "serve", str(engine), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"optimize serve exited: {proc.stderr.read()[-2000:]}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("optimize serve did not answer /health within 300 s") from None
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def served_model(base: str) -> tuple[str, int]:
    """The served model's name and its tokens per request (GET /v1/models, /tokenizer_info)."""
    with urllib.request.urlopen(base + "/v1/models") as r:
        name = json.load(r)["data"][0]["id"]
    with urllib.request.urlopen(base + "/tokenizer_info") as r:
        return name, int(json.load(r)["model_max_length"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, required=True, help="an fp32 engine directory")
    ap.add_argument("--hf", type=Path, required=True,
                    help="the same model for transformers: a folder, or the GGUF file the engine was built from")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cloze", type=int, default=40, help="multiple-choice items")
    ap.add_argument("--topic", type=int, default=20, help="generation items")
    ap.add_argument("--batch-size", type=int, default=1, help="prompts per request to the server")
    ap.add_argument("--num-concurrent", type=int, default=1, help="requests in flight to the server")
    args = ap.parse_args(argv)
    from optimizer.core.assets import fetch_asset

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        report = evaluate_both(args, write_tasks(Path(tmp), fetch_asset("text", quiet=True), args.cloze, args.topic))
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if report["same_metrics"] else 1


def evaluate_both(args: argparse.Namespace, tasks: Path) -> dict[str, Any]:
    """lm-eval through the served engine, then on transformers; the report of both."""
    with optimize_serve(args.engine, free_port()) as base:
        name, max_length = served_model(base)
        started = time.perf_counter()
        served = run_lm_eval("local-completions", {"model": name, "base_url": base + "/v1/completions",
                                                   "max_length": max_length, "num_concurrent": args.num_concurrent},
                             tasks, args.batch_size)
        served_s = time.perf_counter() - started
    started = time.perf_counter()
    reference = run_lm_eval("hf", hf_args(args.hf), tasks)
    reference_s = time.perf_counter() - started
    report = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
              "served": {"metrics": metrics(served), "wall_s": round(served_s, 1), "batch_size": args.batch_size,
                         "num_concurrent": args.num_concurrent},
              "transformers": {"metrics": metrics(reference), "wall_s": round(reference_s, 1)},
              "items": compare(served, reference)}
    report["same_metrics"] = report["served"]["metrics"] == report["transformers"]["metrics"]
    return report


if __name__ == "__main__":
    sys.exit(main())
