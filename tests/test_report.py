"""`optimize report` end to end on a tiny model (every file, the schema, the charts, engine
reuse, figures equal to `optimize eval`), and the accuracy gate on `optimize model` / serve."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from optimizer.cli import main
from optimizer.core.errors import InputError
from optimizer.gate import GateFailed, check, parse_limit
from optimizer.pipeline import BuildOptions, build_engine
from optimizer.report import validate_report

SMALL = ["--calib", "tiny:8x64", "--dataset", "tiny", "--windows", "2", "--seq-len", "64",
         "--decode-tokens", "8", "--prefill-tokens", "16", "--requests", "4", "--prompt-range", "8,16",
         "--output-range", "4,8", "--max-batch", "4", "-q"]


def test_report_end_to_end_on_a_tiny_model(tiny_hf_folders, tmp_path):
    folder, cache = str(tiny_hf_folders["llama"]), tmp_path / "cache"
    args = ["report", folder, "--variants", "fp32,int4-rtn,fp8", "--cache-dir", str(cache), *SMALL]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "r1")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "r1"
    for name in ("report.json", "report.md", "report.html", "report.schema.json", "pareto.png",
                 "size_accuracy.png", "latency.png"):
        assert (out / name).stat().st_size > 0, name
    doc = json.loads((out / "report.json").read_text())
    validate_report(doc)
    assert [v["name"] for v in doc["variants"]] == ["fp32", "int4-rtn", "fp8"]
    assert doc["baseline"] == "fp32" and doc["recommendation"]["variant"] in {"fp32", "int4-rtn", "fp8"}
    assert any(v["pareto"] for v in doc["variants"])
    for v in doc["variants"]:
        assert v["reused"] is False and v["speed"]["decode_tok_s"] > 0 and v["speed"]["peak_rss_bytes"] > 0
        assert v["speed"]["serving"]["output_tok_s"] > 0
    assert {v["quantization"]["method"] for v in doc["variants"]} == {"none", "rtn", "fp8"}
    html = (out / "report.html").read_text()
    assert html.count("<svg") >= 3 and doc["recommendation"]["variant"] in html
    # the report's perplexity is `optimize eval`'s on the same engine and windows
    fp8 = doc["variants"][2]
    evaluated = CliRunner().invoke(main, ["eval", fp8["engine_dir"], "--dataset", "tiny", "--windows", "2",
                                          "--seq-len", "64", "--json"])
    assert json.loads(evaluated.output)["perplexity"] == pytest.approx(fp8["accuracy"]["perplexity"], rel=1e-9)
    # a second report reuses every engine (same identity), and measures again
    again = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "r2")])
    assert again.exit_code == 0, again.output
    doc2 = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert all(v["reused"] for v in doc2["variants"])
    assert [v["engine_key"] for v in doc2["variants"]] == [v["engine_key"] for v in doc["variants"]]


def test_report_refuses_bad_variants(tiny_hf_folders, tmp_path):
    result = CliRunner().invoke(main, ["report", str(tiny_hf_folders["llama"]), "--variants", "fp32,int4-rtm",
                                       "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "int4-rtn" in result.output  # the closest valid name
    result = CliRunner().invoke(main, ["report", str(tiny_hf_folders["llama"]), "--variants", "int4-rtn",
                                       "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "baseline 'fp32' is not among the variants" in result.output
    assert not (tmp_path / "r").exists()


def test_limits_and_verdicts():
    assert parse_limit("3%").allowed(10.0) == pytest.approx(10.3)
    assert parse_limit("0.5").allowed(10.0) == pytest.approx(10.5)
    assert check(parse_limit("3%"), 10.29, 10.0)["passed"] and not check(parse_limit("3%"), 10.31, 10.0)["passed"]
    for bad in ("three", "-1%"):
        with pytest.raises(InputError):
            parse_limit(bad)


def test_gate_fails_keeps_the_engine_marked_and_serve_refuses_it(tmp_path, smol_tokenizer_dir):
    out = tmp_path / "e"
    opts = BuildOptions(out=out, random_weights=True, config="tiny-llama", tokenizer=str(smol_tokenizer_dir),
                        max_ppl_increase="3%", gate_eval="tiny:2x32", gate_baseline=1.0, quiet=True)
    with pytest.raises(GateFailed, match="limit 3%"):
        build_engine(opts)
    gate = json.loads((out / "manifest.json").read_text())["gate"]
    assert gate["passed"] is False and gate["baseline_perplexity"] == 1.0 and gate["perplexity"] > 1.03
    result = CliRunner().invoke(main, ["serve", str(out), "--port", "1"])
    assert result.exit_code == 6 and "refusing to serve" in result.output and "--allow-failed-gate" in result.output


def test_cli_gate_passes_against_the_source_model(tmp_path, smol_tokenizer_dir):
    out = tmp_path / "e"
    result = CliRunner().invoke(main, ["model", "--random-weights", "--config", "tiny-llama", "--tokenizer",
                                       str(smol_tokenizer_dir), "--quant", "int8", "--group-size", "0",
                                       "--max-ppl-increase", "50%", "--gate-eval", "tiny:2x32", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    gate = json.loads((out / "manifest.json").read_text())["gate"]
    assert gate["passed"] and gate["limit"] == "50%" and gate["eval"] == "tiny:2x32"
    assert abs(gate["perplexity"] / gate["baseline_perplexity"] - 1) < 0.5
