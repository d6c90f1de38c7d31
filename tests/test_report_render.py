"""optimize report, rendering half: schema, Pareto front, recommendation, and the written files
for a synthetic six-variant report and its edge cases (no network, no models)."""

from __future__ import annotations

import copy
import json

import pytest

from optimizer.core.errors import OptimizerError
from optimizer.report import (REPORT_SCHEMA_VERSION, annotate, pareto_front, recommend,
                              validate_report, write_report)

GB = 10**9
# name: (method, bits, group, ppl, prefill, decode, serving tok/s, ttft p50 s, tpot p50 ms, size)
VARIANTS = {
    "fp32": ("none", None, None, 9.804, 410.0, 18.1, 61.0, 0.42, 52.0, int(4.94 * GB)),
    "int8-rtn": ("rtn", 8, 0, 9.831, 520.0, 34.2, 118.0, 0.31, 28.5, int(1.36 * GB)),
    "int4-rtn": ("rtn", 4, 32, 10.452, 560.0, 52.0, 171.0, 0.27, 18.9, int(0.79 * GB)),
    "int4-awq": ("awq", 4, 64, 10.010, 555.0, 52.4, 173.0, 0.27, 18.7, int(0.77 * GB)),
    "int4-gptq": ("gptq", 4, 64, 9.971, 548.0, 50.9, 169.0, 0.28, 19.4, int(0.77 * GB)),
    "fp8": ("fp8", 8, None, 9.850, 300.0, 20.3, 70.0, 0.47, 47.0, int(1.31 * GB)),
}


def _variant(limit, name, method, bits, group, ppl, prefill, decode, serving, ttft, tpot, size,
             base_ppl=9.804):
    return {
        "name": name, "engine_dir": f"report-out/engines/{name}", "engine_key": f"{name}-3f9a1c",
        "reused": name == "fp32",
        "quantization": {"method": method, "bits": bits, "group_size": group,
                         **({"calibration": "c4:128x512"} if method in ("awq", "gptq") else {})},
        "build_seconds": 12.5 if name != "fp32" else None, "size_bytes": size,
        "accuracy": {"perplexity": ppl, "tokens": 20440,
                     "delta_vs_baseline": None if name == "fp32" else round(ppl / base_ppl - 1, 5)},
        "speed": {"prefill_tok_s": prefill, "decode_tok_s": decode,
                  "serving": {"output_tok_s": serving, "total_s": 38.2,
                              "ttft_s": {"p50": ttft, "p95": ttft * 2.1, "p99": ttft * 3.0},
                              "tpot_ms": {"p50": tpot, "p95": tpot * 1.4, "p99": tpot * 1.9}},
                  "peak_rss_bytes": size + 600 * 10**6},
        "gate": None if name == "fp32" or limit is None else {
            "passed": ppl <= base_ppl * (1 + limit), "limit": f"{limit * 100:g}%", "perplexity": ppl,
            "baseline_perplexity": base_ppl},
        "pareto": False,
    }


def make_report(names=tuple(VARIANTS), limit: float | None = 0.03) -> dict:
    doc = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "created_at": "2026-11-21T12:00:00+00:00",
        "model": {"source": "HuggingFaceTB/SmolLM2-1.7B", "architecture": "llama",
                  "parameters": 1_711_376_384},
        "environment": {"platform": "Linux-6.1-x86_64", "cpu": "AMD EPYC 9654", "cpu_cores": 16,
                        "gpu": None, "provider": "cpu", "threads": 8,
                        "versions": {"optimizer": "0.1.0", "onnxruntime": "1.31.0",
                                     "torch": "2.13.0", "numpy": "2.4.6"}},
        "settings": {"dataset": "wiki", "windows": 40, "seq_len": 512, "windows_sha256": "ab" * 32,
                     "prefill_tokens": 512, "decode_tokens": 128,
                     "serving": {"requests": 64, "prompt_tokens": [32, 512],
                                 "output_tokens": [16, 256], "seed": 0, "max_batch": 16},
                     "max_ppl_increase": None if limit is None else
                     {"kind": "relative", "value": limit, "text": f"{limit * 100:g}%"}},
        "baseline": names[0],
        "variants": [_variant(limit, n, *VARIANTS[n]) for n in names],
        "recommendation": {"variant": None, "reason": "not yet computed"},
    }
    return annotate(doc)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    doc = make_report()
    return doc, write_report(doc, tmp_path_factory.mktemp("report"))


def test_six_variants_front_and_recommendation():
    doc = make_report()
    assert {v["name"] for v in doc["variants"] if v["pareto"]} == {
        "fp32", "int8-rtn", "int4-gptq", "int4-awq"}
    rec = doc["recommendation"]
    assert rec["variant"] == "int4-awq"
    assert rec["reason"] == ("int4-awq: 2.9x the baseline's decode speed at +2.1% perplexity, "
                             "the fastest variant within the 3% limit.")
    # int4-rtn is faster than gptq but fails the 3% gate: a tighter limit picks gptq / int8.
    assert recommend(make_report(limit=0.0175))["variant"] == "int4-gptq"
    assert recommend(make_report(limit=0.005))["variant"] == "int8-rtn"


def test_pareto_front_cases():
    assert pareto_front({"a": (10.0, 20.0)}) == {"a"}
    assert pareto_front([("a", 10.0, 20.0), ("b", 11.0, 30.0), ("c", 11.0, 25.0)]) == {"a", "b"}
    # ties: identical points dominate neither; equal ppl and slower is dominated
    assert pareto_front({"a": (10.0, 20.0), "b": (10.0, 20.0), "c": (10.0, 19.0)}) == {"a", "b"}
    # a missing speed cannot be compared: never on the front, and it hides nobody
    assert pareto_front({"a": (10.0, None), "b": (12.0, 5.0)}) == {"b"}
    assert pareto_front({"a": (10.0, None)}) == set()
    assert pareto_front({}) == set()


def test_recommend_edge_cases():
    one = make_report(names=("fp32",))
    assert one["recommendation"] == {"variant": "fp32", "reason": "fp32: the only variant measured."}
    assert one["variants"][0]["pareto"]

    # no limit: the fastest on the front
    assert recommend(make_report(limit=None))["variant"] == "int4-awq"
    assert "no perplexity limit was set" in recommend(make_report(limit=None))["reason"]

    # nothing but the baseline within the limit: ship the baseline
    doc = make_report(names=("fp32", "int4-rtn"))
    assert doc["recommendation"]["variant"] == "fp32"
    assert "baseline itself" in doc["recommendation"]["reason"]

    # the recommended variant lost its speed figures: the next fastest within the limit
    doc = make_report()
    awq = next(v for v in doc["variants"] if v["name"] == "int4-awq")
    awq["speed"]["decode_tok_s"] = None
    assert recommend(doc)["variant"] == "int4-gptq"

    # no speed at all: the smallest engine within the limit
    doc = make_report(names=("fp32", "int8-rtn", "int4-awq", "int4-rtn"))
    for v in doc["variants"]:
        v["speed"]["decode_tok_s"] = None
    rec = recommend(doc)
    assert rec == {"variant": "int4-awq", "reason": (
        "int4-awq: 0.16x the baseline's engine size at +2.1% perplexity, the smallest engine "
        "within the 3% limit (no decode speed was measured).")}

    # a tie on speed: the lower perplexity wins, and the choice does not depend on order
    doc = make_report(names=("fp32", "int4-awq", "int4-gptq"))
    for v in doc["variants"][1:]:
        v["speed"]["decode_tok_s"] = 50.0
    assert recommend(doc)["variant"] == "int4-gptq"
    doc["variants"].reverse()
    assert recommend(doc)["variant"] == "int4-gptq"


def test_every_file_is_written(full_report):
    doc, paths = full_report
    assert set(paths) == {"json", "md", "html", "schema", "pareto", "size_accuracy", "latency"}
    for path in paths.values():
        assert path.is_file() and path.stat().st_size > 0
    for chart in ("pareto", "size_accuracy", "latency"):
        assert paths[chart].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads(paths["json"].read_text())
    assert on_disk == doc
    validate_report(on_disk)
    assert json.loads(paths["schema"].read_text())["$schema"].endswith("2020-12/schema")
    # keys in the schema's order, whatever order the document was built in
    assert list(on_disk)[:3] == ["schema_version", "created_at", "model"]
    assert list(on_disk["variants"][0])[:2] == ["name", "engine_dir"]
    shuffled = json.loads(json.dumps(doc, sort_keys=True))
    again = write_report(shuffled, paths["json"].parent.parent / "again")
    assert again["json"].read_bytes() == paths["json"].read_bytes()


def test_markdown_has_the_table(full_report):
    _, paths = full_report
    md = paths["md"].read_text()
    assert "**Ship `int4-awq`**" in md
    assert "| variant | method | bits | ppl | Δppl vs baseline |" in md
    assert "| fp32 (baseline) | none | — | 9.804 | baseline | 410.0 | 18.1 | 61.0 | 420 / 882 |" in md
    assert "| **int4-awq** | awq | 4 | 10.010 | +2.1% |" in md
    assert "| int4-rtn | rtn | 4 | 10.452 | +6.6% |" in md and "FAIL (limit 3%)" in md
    for name in VARIANTS:
        assert f"| {name}" in md or f"| **{name}" in md
    assert "## Environment" in md and "AMD EPYC 9654 (16 cores)" in md


def test_html_has_charts_and_recommendation(full_report):
    _, paths = full_report
    html = paths["html"].read_text()
    for chart in ("pareto", "size_accuracy", "latency"):
        start = html.index(f'id="chart-{chart}"')
        assert "<svg" in html[start:start + 400]
    assert html.count("<svg") == 3
    assert 'class="verdict"' in html and '<div class="name">int4-awq</div>' in html
    assert 'class="fail" data-variant="int4-rtn"' in html
    assert 'class="pareto recommended" data-variant="int4-awq"' in html
    # self-contained: no external fetches (SVG namespaces are not fetches)
    for needle in ("<script", "<link", "src=\"http", "url(http", "@import"):
        assert needle not in html


def test_edge_cases_render(tmp_path):
    one = make_report(names=("fp32",))
    paths = write_report(one, tmp_path / "one")
    assert "fp32" in paths["html"].read_text()

    doc = make_report()
    fp8 = next(v for v in doc["variants"] if v["name"] == "fp8")
    fp8["speed"] = {"prefill_tok_s": None, "decode_tok_s": None, "serving": None,
                    "peak_rss_bytes": None}
    doc = annotate(doc)
    paths = write_report(doc, tmp_path / "null-speed")
    html = paths["html"].read_text()
    assert "not shown (no decode speed): fp8" in html or "fp8" in html
    assert "| fp8 | fp8 | 8 | 9.850 | +0.5% | — | — | — | — | — |" in paths["md"].read_text()

    none = make_report(names=("fp32", "int4-rtn"))
    for v in none["variants"]:
        v["speed"] = {"prefill_tok_s": None, "decode_tok_s": None, "serving": None,
                      "peak_rss_bytes": None}
    none["recommendation"] = {"variant": None, "reason": "No variant stays within the limit."}
    paths = write_report(none, tmp_path / "no-speed")
    assert 'class="verdict none"' in paths["html"].read_text()
    assert "**No variant to ship**" in paths["md"].read_text()


INVALID = [
    (lambda d: d["variants"][1]["accuracy"].pop("perplexity"), "'perplexity' is a required"),
    (lambda d: d["variants"][2]["speed"].__setitem__("decode_tok_s", "fast"),
     "variants[2].speed.decode_tok_s: 'fast' is not of type 'number'"),
    (lambda d: d["environment"].__setitem__("cpu_cores", 16.5), "environment.cpu_cores"),
    (lambda d: d.pop("baseline"), "'baseline' is a required"),
    (lambda d: d["settings"].__setitem__("max_ppl_increase", {"kind": "ratio", "value": 1,
                                                             "text": "1"}),
     "settings.max_ppl_increase"),
    (lambda d: d["variants"][0]["quantization"].__setitem__("method", "magic"),
     "variants[0].quantization.method"),
    (lambda d: d["variants"][0].__setitem__("colour", "red"), "'colour' was unexpected"),
    (lambda d: d.__setitem__("schema_version", 2), "schema_version"),
    (lambda d: d.__setitem__("baseline", "fp64"), "baseline: 'fp64' is not a variant"),
    (lambda d: d["variants"][1].__setitem__("name", "fp32"), "duplicate variant name"),
    (lambda d: d["recommendation"].__setitem__("variant", "int2"), "recommendation.variant"),
]


@pytest.mark.parametrize("edit, field", INVALID, ids=[field for _, field in INVALID])
def test_invalid_documents_are_rejected(edit, field, tmp_path):
    doc = copy.deepcopy(make_report())
    edit(doc)
    with pytest.raises(OptimizerError) as err:
        validate_report(doc)
    assert field in str(err.value)
    with pytest.raises(OptimizerError):
        write_report(doc, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written for an invalid document
