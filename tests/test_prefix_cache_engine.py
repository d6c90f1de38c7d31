"""Automatic prefix caching through real engines: greedy tokens with the cache on equal those
with it off (and each request's tokens alone), on a tiny random engine and on SmolLM2-135M int4;
the switch on the command line."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from optimizer.cli import main
from optimizer.pipeline import BuildOptions, build_engine
from runtime import Engine, SamplingParams


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smol_tokenizer_dir) -> Engine:
    out = tmp_path_factory.mktemp("prefix") / "engine"
    build_engine(BuildOptions(out=out, random_weights=True, config="tiny-llama", tokenizer=str(smol_tokenizer_dir),
                              kv_slots=4, kv_capacity=160, quiet=True))
    return Engine.load(out)


def shared_prefix_requests(seed: int, n: int, vocab: int, prefix_len: int = 90):
    """Prompts that share some of one of two prefixes, then go their own way."""
    rng = random.Random(seed)
    bases = [[rng.randrange(1, vocab) for _ in range(prefix_len)] for _ in range(2)]
    prompts = [rng.choice(bases)[:rng.randint(0, prefix_len)]
               + [rng.randrange(1, vocab) for _ in range(rng.randint(1, 12))] for _ in range(n)]
    params = [SamplingParams(max_new_tokens=rng.randint(1, 24), ignore_eos=True) for _ in prompts]
    return prompts, params


def serve(engine: Engine, prompts, params, caching: bool, max_batch: int = 4, chunk: int = 32):
    llm = engine.llm(max_batch=max_batch, prefix_caching=caching, prefill_chunk=chunk)
    seqs = [llm.make_sequence(p, q, detokenize=False) for p, q in zip(prompts, params)]
    llm.run(seqs)
    llm.scheduler.pool.check()
    return [s.output_ids for s in seqs], llm


def test_tiny_engine_greedy_tokens_equal_with_and_without_the_cache(tiny):
    prompts, params = shared_prefix_requests(0, 24, vocab=1000)
    off, _ = serve(tiny, prompts, params, caching=False)
    on, llm = serve(tiny, prompts, params, caching=True)
    assert llm.prefix_caching and llm.total_cached_tokens > 300  # the cache served a good part
    assert on == off
    for ids, p, tokens in zip(prompts, params, on):
        assert tokens == tiny.generate_ids(ids, p).token_ids


def test_cached_tokens_are_reported_per_request(tiny):
    ids = list(range(100, 160))
    llm = tiny.llm(max_batch=2)
    first = llm.make_sequence(ids, SamplingParams(max_new_tokens=2), detokenize=False)
    llm.run([first])
    again = llm.make_sequence(ids + [7, 8], SamplingParams(max_new_tokens=2), detokenize=False)
    llm.run([again])
    assert first.cached_tokens == 0 and again.cached_tokens == len(ids)
    assert (llm.total_queried_tokens, llm.total_cached_tokens) == (2 * len(ids) + 2, len(ids))
    plain = tiny.llm(max_batch=2, prefix_caching=False)
    seq = plain.make_sequence(ids, SamplingParams(max_new_tokens=2), detokenize=False)
    plain.run([seq])
    assert seq.cached_tokens == 0 and plain.total_queried_tokens == 0


def test_generate_cli_has_the_switch(tiny, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    system = "You are a helpful assistant who answers in one short sentence. " * 4
    prompts.write_text("".join(json.dumps(system + q) + "\n" for q in ("Hi.", "Why?", "How?")))
    outputs = []
    for flag in ("--prefix-caching", "--no-prefix-caching"):
        result = CliRunner().invoke(main, ["generate", str(tiny.dir.path), "--prompts", str(prompts),
                                           "--max-new-tokens", "6", "--ignore-eos", flag])
        assert result.exit_code == 0, result.output
        outputs.append([json.loads(line)["text"] for line in result.stdout.splitlines()])
    assert outputs[0] == outputs[1] and len(outputs[0]) == 3


@pytest.mark.real
def test_smollm2_int4_greedy_tokens_equal_with_and_without_the_cache(tmp_path_factory, smollm2_gguf):
    """Real weights, int4 with exact numerics (`--int4-defaults exact`: the fast defaults'
    int8 activations are not batch-invariant, see README Limits): 16 requests sharing a system
    prompt of real text, 8 slots."""
    from calibration.data import load_text

    out = tmp_path_factory.mktemp("prefix-real") / "smollm2-int4"
    result = CliRunner().invoke(main, ["model", str(smollm2_gguf), "--quant", "int4", "--int4-defaults", "exact",
                                       "--kv-slots", "8", "--kv-capacity", "384", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    engine = Engine.load(out)
    text = engine.tokenizer(load_text("wiki")[:20_000]).input_ids
    system, rng = text[:200], random.Random(1)
    prompts = [system + text[300 + 40 * i: 300 + 40 * i + rng.randint(3, 30)] for i in range(16)]
    params = [SamplingParams(max_new_tokens=rng.randint(4, 16), ignore_eos=True) for _ in prompts]
    off, _ = serve(engine, prompts, params, caching=False, max_batch=8, chunk=256)
    on, llm = serve(engine, prompts, params, caching=True, max_batch=8, chunk=256)
    assert llm.total_cached_tokens >= 15 * 192
    assert on == off
