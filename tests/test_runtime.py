"""The generation loop: EOS and stop tokens, BOS handling, streaming text."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from optimizer.pipeline import BuildOptions, build_engine
from runtime import Engine, SamplingParams
from runtime.detokenize import IncrementalDetokenizer


@pytest.fixture(scope="module")
def gemma_engine(tmp_path_factory, smol_tokenizer_dir) -> Engine:
    out = tmp_path_factory.mktemp("rt") / "engine"
    build_engine(BuildOptions(out=out, random_weights=True, config="tiny-gemma3",
                              tokenizer=str(smol_tokenizer_dir), quiet=True))
    return Engine.load(out)


def test_stops_on_eos_unless_ignored(gemma_engine):
    prompt = gemma_engine.encode("Hello there")
    first = gemma_engine.generate_ids(prompt, SamplingParams(max_new_tokens=8)).token_ids[0]
    gemma_engine.eos_token_ids = [first]
    stopped = gemma_engine.generate_ids(prompt, SamplingParams(max_new_tokens=8))
    assert stopped.token_ids == [first] and stopped.finish_reason == "stop"
    ignored = gemma_engine.generate_ids(prompt, SamplingParams(max_new_tokens=8, ignore_eos=True))
    assert len(ignored.token_ids) == 8 and ignored.finish_reason == "length"
    assert ignored.token_ids[0] == first


def test_stop_token_ids_apply_even_with_ignore_eos(gemma_engine):
    prompt = gemma_engine.encode("Hello there")
    tokens = gemma_engine.generate_ids(prompt, SamplingParams(max_new_tokens=6, ignore_eos=True)).token_ids
    stop = tokens[2]
    result = gemma_engine.generate_ids(prompt, SamplingParams(max_new_tokens=6, ignore_eos=True,
                                                              stop_token_ids=(stop,)))
    assert result.token_ids == tokens[:tokens.index(stop) + 1] and result.finish_reason == "stop"


def test_bos_is_prepended_where_the_architecture_needs_it(gemma_engine, smol_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    plain = tok("Hello").input_ids
    bos = gemma_engine.manifest["generation"]["bos_token_id"]
    assert plain[0] != bos  # the SmolLM2 tokenizer adds no BOS itself
    assert gemma_engine.encode("Hello") == [bos] + plain


def test_streamed_text_equals_final_text(gemma_engine):
    pieces: list[str] = []
    result = gemma_engine.generate("Once", SamplingParams(max_new_tokens=12, ignore_eos=True), on_text=pieces.append)
    assert "".join(pieces) == result.text
    assert len(result.token_ids) == 12


def test_incremental_detokenizer_handles_multibyte(smol_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    text = "héllo wörld, 日本語 🙂 done"
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.push(i) for i in tok(text).input_ids] + [detok.flush()]
    assert "".join(pieces) == tok.decode(tok(text).input_ids, skip_special_tokens=True)
    assert all("\ufffd" not in p for p in pieces)


def test_static_cache_generates_what_the_concat_cache_does(gemma_engine, monkeypatch):
    """Fused engines decode through a preallocated in-place cache (IO binding); the tokens
    equal those of the plain concat cache, sampled and greedy."""
    import runtime.generate
    from runtime.executors import ConcatExecutor, StaticExecutor, make_executor

    ids = gemma_engine.encode("Hello there")
    assert isinstance(make_executor(gemma_engine.session, 1, 32), StaticExecutor)
    for params in (SamplingParams(max_new_tokens=12, ignore_eos=True),
                   SamplingParams(max_new_tokens=12, ignore_eos=True, temperature=0.9, top_k=20, seed=4)):
        static = gemma_engine.generate_ids(ids, params).token_ids
        with monkeypatch.context() as m:
            m.setattr(runtime.generate, "make_executor",
                      lambda session, slots, capacity: ConcatExecutor(session, slots, capacity))
            concat = gemma_engine.generate_ids(ids, params).token_ids
        assert static == concat


def test_sequences_beyond_the_engine_maximum_are_refused(gemma_engine):
    from optimizer.core.errors import EngineError

    limit = gemma_engine.session.kv.max_sequence_length
    prompt = gemma_engine.encode("Hello")
    with pytest.raises(EngineError, match="exceed the engine's maximum sequence length"):
        gemma_engine.generate_ids(prompt, SamplingParams(max_new_tokens=limit, ignore_eos=True))


def test_host_buffers_give_the_generic_binding_path_logits(gemma_engine):
    """On CPU the static executor binds its step inputs and logits to preallocated buffers
    (runtime.host_io); every prefill and batched decode step gives the same logits as the
    generic IO-binding path, also when the batch shrinks, grows and its rows move."""
    import numpy as np

    from runtime.executors import StaticExecutor
    from runtime.sequence import Sequence

    def run(host: bool) -> list[np.ndarray]:
        executor = StaticExecutor(gemma_engine.session, slots=3, capacity=40)
        assert executor._host is not None
        if not host:
            executor._host = None
        seqs = [Sequence(str(i), gemma_engine.encode(text), SamplingParams(max_new_tokens=20), [])
                for i, text in enumerate(["Hello there", "A longer prompt than the first", "x"])]
        out = []
        for seq in seqs:
            executor.pool.admit(seq.request_id, 40)
            out.append(executor.prefill(seq, 0, seq.num_tokens))
            seq.append(int(out[-1].argmax()))
        for step in range(6):
            if step == 2:  # the first finishes: the last moves down into its slot
                executor.release(seqs[0])
                executor.pool.release(seqs[0].request_id)
                seqs = seqs[1:]
            logits = executor.decode(seqs)
            out.append(logits.copy())  # decode logits are valid until the next step
            for seq, row in zip(seqs, logits):
                seq.append(int(row.argmax()))
        return out

    fast, generic = run(True), run(False)
    assert len(fast) == len(generic)
    for a, b in zip(fast, generic):
        assert a.shape == b.shape and np.array_equal(a, b)


def test_decode_steps_bind_nothing_again(gemma_engine):
    """A CPU decode step binds its attention mask as wide as the cache (runtime.host_io), so
    after the first one a growing sequence's steps rebind nothing."""
    from runtime.executors import StaticExecutor
    from runtime.sequence import Sequence

    executor = StaticExecutor(gemma_engine.session, slots=1, capacity=40)
    seq = Sequence("0", gemma_engine.encode("Hello there"), SamplingParams(max_new_tokens=20), [])
    executor.pool.admit(seq.request_id, 40)
    seq.append(int(executor.prefill(seq, 0, seq.num_tokens).argmax()))
    seq.append(int(executor.decode([seq])[0].argmax()))
    binding = executor._binding(0, 1)
    calls = []
    binding.bind_input = lambda *args: calls.append(args[0])
    binding.bind_output = lambda *args: calls.append(args[0])
    for _ in range(5):
        seq.append(int(executor.decode([seq])[0].argmax()))
    assert calls == []
