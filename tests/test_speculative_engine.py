"""Speculative decoding through real tiny engines: greedy tokens equal with and without it
(static and concat layouts, prompt lookup and a draft engine), an abort mid-run leaves the
cache clean, a draft engine with another tokenizer is refused, and the CLI switch."""

from __future__ import annotations

import asyncio
import random

import pytest
from click.testing import CliRunner

from calibration.config import quant_config
from optimizer.cli import main
from optimizer.core.errors import InputError
from optimizer.pipeline import BuildOptions, build_engine
from runtime import Engine, SamplingParams, SpeculativeConfig


def _build(root, name: str, tokenizer, **kwargs) -> Engine:
    """A tiny Qwen2-shaped engine (untied head: it does not just repeat its last token)."""
    out = root / name
    build_engine(BuildOptions(out=out, random_weights=True, config="tiny-qwen2", tokenizer=tokenizer, quiet=True,
                              **kwargs))
    return Engine.load(out)


@pytest.fixture(scope="module")
def engines(tmp_path_factory, smol_tokenizer_dir) -> dict[str, Engine]:
    root = tmp_path_factory.mktemp("speculative")
    tok = str(smol_tokenizer_dir)
    return {"static": _build(root, "static", tok, kv_slots=4, kv_capacity=160),
            "concat": _build(root, "concat", tok, kv_layout="concat"),
            # the same weights in int4 (RTN, groups of 32): a draft that mostly agrees
            "int4": _build(root, "int4", tok, kv_slots=4, kv_capacity=160, quant=quant_config("rtn", group_size=32)),
            "no-tokenizer": _build(root, "bare", None, kv_slots=4, kv_capacity=160)}


def copy_prompts(seed: int, n: int):
    """Prompts that repeat a pattern (so prompt lookup finds drafts), of varied lengths."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        base = [rng.randrange(1, 1000) for _ in range(rng.randint(3, 12))]
        prompts.append((base * 8)[:rng.randint(8, 70)])
    params = [SamplingParams(max_new_tokens=rng.randint(1, 40), ignore_eos=True) for _ in prompts]
    return prompts, params


def serve(engine: Engine, prompts, params, speculative=None, max_batch: int = 4):
    llm = engine.llm(max_batch=max_batch, speculative=speculative)
    seqs = [llm.make_sequence(p, q, detokenize=False) for p, q in zip(prompts, params)]
    llm.run(seqs)
    llm.scheduler.pool.check()
    assert not llm.scheduler.pool.holders()
    return [s.output_ids for s in seqs], llm


@pytest.mark.parametrize("layout", ["static", "concat"])
@pytest.mark.parametrize("k", [1, 4])
def test_greedy_tokens_equal_with_prompt_lookup(engines, layout, k):
    engine = engines[layout]
    prompts, params = copy_prompts(0, 12)
    off, _ = serve(engine, prompts, params)
    on, llm = serve(engine, prompts, params, SpeculativeConfig("ngram", k, ngram_min=1, max_batch=4))
    assert on == off
    # drafts were kept (more than a token per step) and rejected (rolled back)
    assert 0 < llm.total_accepted_tokens < llm.total_drafted_tokens
    assert llm.total_decode_tokens > llm.total_decode_rows
    for ids, p, tokens in zip(prompts, params, on):
        assert tokens == engine.generate_ids(ids, p).token_ids


def test_greedy_tokens_equal_with_a_draft_engine_and_rejections_roll_back(engines):
    engine = engines["static"]
    prompts, params = copy_prompts(1, 8)
    off, _ = serve(engine, prompts, params)
    same, llm = serve(engine, prompts, params, SpeculativeConfig("draft", 3, draft=engine, max_batch=4))
    assert same == off and llm.total_accepted_tokens == llm.total_drafted_tokens > 0  # itself: all kept
    spec = SpeculativeConfig("draft", 3, draft=engines["int4"], max_batch=4)
    other, llm = serve(engine, prompts, params, spec)
    assert other == off and 0 < llm.total_accepted_tokens < llm.total_drafted_tokens
    assert not llm.drafter.executor.pool.holders()  # the draft cache is free again


def test_sampled_speculation_is_reproducible_and_in_range(engines):
    engine = engines["static"]
    prompts, _ = copy_prompts(2, 6)
    params = [SamplingParams(max_new_tokens=24, temperature=0.8, top_k=50, seed=i, ignore_eos=True)
              for i in range(len(prompts))]
    for spec in (SpeculativeConfig("ngram", 3, ngram_min=1, max_batch=4),
                 SpeculativeConfig("draft", 3, draft=engines["int4"], max_batch=4)):
        first, llm = serve(engine, prompts, params, spec)
        again, _ = serve(engine, prompts, params, spec)
        assert first == again and all(len(t) == 24 for t in first) and llm.total_drafted_tokens > 0


def test_an_abort_mid_speculation_frees_the_row(engines):
    engine = engines["static"]
    llm = engine.llm(max_batch=2, speculative=SpeculativeConfig("draft", 4, draft=engines["int4"], max_batch=2))
    a = llm.add_request([5, 6, 7] * 10, SamplingParams(max_new_tokens=60, ignore_eos=True), detokenize=False)
    b = llm.add_request([8, 9] * 10, SamplingParams(max_new_tokens=20, ignore_eos=True), detokenize=False)
    while len(a.output_ids) < 8:
        llm.step()
    assert llm.total_drafted_tokens > 0
    llm.abort(a.request_id)
    llm.scheduler.pool.check()
    assert a.request_id not in llm.drafter.executor.pool.holders()
    while llm.has_work:
        llm.step()
    assert not llm.scheduler.pool.holders() and b.output_ids == engine.generate_ids(
        b.prompt_ids, b.params).token_ids


def test_a_draft_engine_must_share_the_tokenizer(engines):
    with pytest.raises(InputError, match="need their tokenizer"):
        engines["static"].llm(speculative=SpeculativeConfig("draft", 2, draft=engines["no-tokenizer"]))


def test_generate_cli_speculates(engines):
    engine = engines["static"]
    args = ["generate", str(engine.dir.path), "--prompt", "one two three four one two three four one two",
            "--max-new-tokens", "24", "--ignore-eos", "--no-verify"]
    plain = CliRunner().invoke(main, args)
    fast = CliRunner().invoke(main, args + ["--speculative", "ngram", "--num-speculative-tokens", "3"])
    assert plain.exit_code == 0 and fast.exit_code == 0, fast.output

    def text(output: str) -> str:  # without the line of timings
        return "\n".join(line for line in output.splitlines() if "prompt tokens" not in line)

    assert text(plain.output) == text(fast.output) and text(fast.output).strip()
    bad = CliRunner().invoke(main, args + ["--speculative", "draft"])
    assert bad.exit_code != 0 and "--draft" in bad.output


def test_metrics_report_acceptance_and_tokens_per_step(engines):
    from runtime.async_engine import AsyncEngine

    engine = engines["static"]
    server = AsyncEngine(engine.llm(speculative=SpeculativeConfig("draft", 3, draft=engines["int4"]))).start()
    try:
        seq = server.new_sequence(list(range(300, 340)), SamplingParams(max_new_tokens=30, ignore_eos=True), False)
        asyncio.run(server.run_sequence(seq))
    finally:
        server.shutdown()
    values = {line.split()[0]: float(line.split()[1]) for line in server.metrics.render().decode().splitlines()
              if line.startswith("optimizer_") and not line.startswith("#")}
    llm = server.llm
    assert values["optimizer_spec_decode_drafted_tokens_total"] == llm.total_drafted_tokens > 0
    assert values["optimizer_spec_decode_accepted_tokens_total"] == llm.total_accepted_tokens
    assert values["optimizer_spec_decode_acceptance_rate"] == pytest.approx(
        llm.total_accepted_tokens / llm.total_drafted_tokens)
    assert values["optimizer_decode_tokens_per_step"] == pytest.approx(29 / llm.total_decode_rows)
    assert llm.total_decode_rows < 29  # more than one token per step
    assert seq.output_ids == engine.generate_ids(seq.prompt_ids, seq.params).token_ids
