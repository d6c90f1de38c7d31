"""The `optimize report` document (report.json): its JSON Schema and validation.

One document compares several engine variants of one model. Its fields:

    schema_version   1
    created_at       ISO 8601 date-time with offset, e.g. "2026-11-21T12:00:00+00:00"
    model            {source, architecture, parameters (int | null)}
    environment      {platform, cpu, cpu_cores, gpu (str | null), provider ("cpu" | "cuda"),
                      threads (int | null), versions {package: version}}
    settings         {dataset, windows, seq_len, windows_sha256,   # the perplexity windows
                      prefill_tokens, decode_tokens,                # the speed run
                      serving {requests, prompt_tokens [lo, hi], output_tokens [lo, hi],
                               seed, max_batch},
                      max_ppl_increase {kind "relative" | "absolute", value, text} | null}
    baseline         the name of one variant, the reference for deltas and speed-ups
    variants         [{name, engine_dir, engine_key, reused,
                       quantization {method "awq"|"rtn"|"gptq"|"awq-gptq"|"fp8"|"none", bits (int|null),
                                     group_size (int|null), ...free-form},
                       build_seconds (float | null), size_bytes,
                       accuracy {perplexity, tokens, delta_vs_baseline (relative: 0.021 = +2.1%,
                                 null for the baseline itself or when unknown)},
                       speed {prefill_tok_s | null, decode_tok_s | null,
                              serving {output_tok_s, total_s,
                                       ttft_s {p50, p95, p99} (seconds),
                                       tpot_ms {p50, p95, p99} (milliseconds)} | null,
                              peak_rss_bytes | null},
                       gate {passed, limit (text, e.g. "3%"), perplexity,
                             baseline_perplexity} | null,
                       pareto (bool: on the perplexity / decode-speed Pareto front)}]
    recommendation   {variant (a variant name | null), reason (one sentence)}

`pareto` and `recommendation` are filled by `optimizer.report.pareto.annotate`. Every object
is closed (an unknown key is an error, to catch typos) except `quantization`, which takes
free-form extra keys (calibration set, act_order, ...), and `versions`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from optimizer.core.errors import OptimizerError

REPORT_SCHEMA_VERSION = 1
SCHEMA_FILE = "report.schema.json"


class ReportError(OptimizerError):
    """A report document does not match the report schema."""


def _obj(props: dict, required: list[str] | None = None, closed: bool = True) -> dict:
    out = {"type": "object", "properties": props,
           "required": list(props) if required is None else required}
    if closed:
        out["additionalProperties"] = False
    return out


def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


_STR = {"type": "string", "minLength": 1}
_INT0 = {"type": "integer", "minimum": 0}
_INT1 = {"type": "integer", "minimum": 1}
_NUM0 = {"type": "number", "minimum": 0}
_POS = {"type": "number", "exclusiveMinimum": 0}
_RANGE = {"type": "array", "items": _INT1, "minItems": 2, "maxItems": 2}
_PERCENTILES = _obj({"p50": _NUM0, "p95": _NUM0, "p99": _NUM0})

_VARIANT = _obj({
    "name": _STR,
    "engine_dir": _STR,
    "engine_key": _STR,
    "reused": {"type": "boolean"},
    "quantization": _obj({
        "method": {"enum": ["awq", "rtn", "gptq", "awq-gptq", "fp8", "none"]},
        "bits": _nullable(_INT1),
        "group_size": _nullable(_INT0),
    }, closed=False),
    "build_seconds": _nullable(_NUM0),
    "size_bytes": _INT0,
    "accuracy": _obj({
        "perplexity": _POS,
        "tokens": _INT1,
        "delta_vs_baseline": _nullable({"type": "number"}),
    }),
    "speed": _obj({
        "prefill_tok_s": _nullable(_NUM0),
        "decode_tok_s": _nullable(_NUM0),
        "serving": _nullable(_obj({
            "output_tok_s": _NUM0, "total_s": _NUM0,
            "ttft_s": _PERCENTILES, "tpot_ms": _PERCENTILES,
        })),
        "peak_rss_bytes": _nullable(_INT0),
    }),
    "gate": _nullable(_obj({
        "passed": {"type": "boolean"}, "limit": _STR,
        "perplexity": _POS, "baseline_perplexity": _POS,
    })),
    "pareto": {"type": "boolean"},
})

REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://optimizer.local/report.schema.json",
    "title": "optimize report",
    "description": "Perplexity and speed of several engine variants of one model, "
                   "their Pareto front and the variant to ship.",
    **_obj({
        "schema_version": {"const": REPORT_SCHEMA_VERSION},
        "created_at": {"type": "string", "format": "date-time",
                       "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$"},
        "model": _obj({"source": _STR, "architecture": _STR,
                       "parameters": _nullable(_INT1)}),
        "environment": _obj({
            "platform": _STR, "cpu": _STR, "cpu_cores": _INT1,
            "gpu": _nullable(_STR), "provider": {"enum": ["cpu", "cuda"]},
            "threads": _nullable(_INT1),
            "versions": {"type": "object", "additionalProperties": {"type": "string"}},
        }),
        "settings": _obj({
            "dataset": _STR, "windows": _INT1, "seq_len": _INT1,
            "windows_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "prefill_tokens": _INT1, "decode_tokens": _INT1,
            "serving": _obj({"requests": _INT1, "prompt_tokens": _RANGE,
                             "output_tokens": _RANGE, "seed": {"type": "integer"},
                             "max_batch": _INT1}),
            "max_ppl_increase": _nullable(_obj({
                "kind": {"enum": ["relative", "absolute"]}, "value": _NUM0, "text": _STR,
            })),
        }),
        "baseline": _STR,
        "variants": {"type": "array", "items": _VARIANT, "minItems": 1},
        "recommendation": _obj({"variant": _nullable(_STR), "reason": _STR}),
    }),
}


def _where(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _explain(err):
    """For a nullable field (anyOf [schema, null]), the error of the non-null branch."""
    import jsonschema

    if err.validator == "anyOf" and err.context:
        real = [e for e in err.context if e.validator_value != "null"]
        if real:
            return _explain(jsonschema.exceptions.best_match(real))
    return err


def validate_report(doc: Any) -> None:
    """Raise `ReportError` naming the first offending field when `doc` is not a valid report.

    Beyond the schema: variant names are unique, and `baseline` and
    `recommendation.variant` name variants of the document.
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(
        REPORT_SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(doc), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        err = _explain(jsonschema.exceptions.best_match(errors))
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ReportError(f"invalid report: {_where(err.absolute_path)}: {err.message}{more}",
                          hint="the report document is described in report.schema.json")
    names = [v["name"] for v in doc["variants"]]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ReportError(f"invalid report: variants: duplicate variant name(s) {dupes}")
    if doc["baseline"] not in names:
        raise ReportError(f"invalid report: baseline: {doc['baseline']!r} is not a variant "
                          f"(variants: {names})")
    rec = doc["recommendation"]["variant"]
    if rec is not None and rec not in names:
        raise ReportError(f"invalid report: recommendation.variant: {rec!r} is not a variant "
                          f"(variants: {names})")


def write_schema(directory: str | Path) -> Path:
    """Write the schema as `report.schema.json` into `directory`; return its path."""
    path = Path(directory) / SCHEMA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(REPORT_SCHEMA, indent=2) + "\n", encoding="utf-8")
    return path
