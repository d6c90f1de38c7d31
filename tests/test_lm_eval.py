"""lm-evaluation-harness's `local-completions` against the server: the requests it sends
(loglikelihood: token-id prompts with echo, logprobs 1, max_tokens 1, batched or one at a time,
or as text; loglikelihood_rolling after the prefix token; generate_until: stop strings with the
EOS text, max_gen_toks), parsed by lm-eval's
own code, give the engine's numbers; its tokenizer is the server's /tokenize (auto-detected).
Then a real evaluation (marked real): SmolLM2-135M fp32 through the server and through
transformers (`lm_eval --model hf`), same local tasks (benchmarks/lm_eval_tasks.py): the same
accuracy, the same choice on every item, the same generated text."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from lm_eval.api.instance import Instance
from lm_eval.models.openai_completions import LocalCompletionsAPI
from lm_eval.utils import check_remote_tokenizer_support

from optimizer.core.assets import fetch_asset
from optimizer.pipeline import BuildOptions, build_engine
from runtime import Engine
from tests.test_server import engine_logprobs, greedy_ids
from tests.conftest import SERVED_CAPACITY
from tests.test_server_limits import serving

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import lm_eval_server  # noqa: E402
from lm_eval_tasks import write_tasks  # noqa: E402

CAPACITY = SERVED_CAPACITY
CONTEXTS = ["Once upon a time, there was a little", "The capital of France is", "def fibonacci(n):"]


@pytest.fixture(scope="module")
def served(served_engine_dir):
    with serving(Engine.load(served_engine_dir)) as (base, server):
        yield base + "/v1/completions", server


def client(url: str, **args) -> LocalCompletionsAPI:
    return LocalCompletionsAPI(model="tiny", base_url=url, max_length=CAPACITY + 1, **args)


def test_lm_eval_finds_and_uses_the_servers_tokenizer(served):
    url, server = served
    assert check_remote_tokenizer_support(url)
    lm = client(url)  # tokenizer_backend="auto": no tokenizer named anywhere
    tok = server.llm.tokenizer
    assert lm.tokenizer_backend == "remote"
    text = "Hello world, once upon a time"
    assert lm.tok_encode(text) == tok(text, add_special_tokens=False).input_ids
    assert lm.decode_batch([tok.encode(text)]) == [text]
    assert (lm.eot_token_id, lm.eos_string) == (tok.eos_token_id, tok.eos_token)


def reference_loglikelihood(server, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """The continuation's logprob under the engine (log_softmax of its logits), and whether it is greedy."""
    lp = engine_logprobs(server, context + continuation)
    rows = [lp[len(context) + i - 1] for i in range(len(continuation))]
    return (float(sum(row[t] for row, t in zip(rows, continuation))),
            all(int(row.argmax()) == t for row, t in zip(rows, continuation)))


@pytest.mark.parametrize("args", [{}, {"batch_size": 3}, {"num_concurrent": 2}, {"tokenized_requests": False}],
                         ids=["one-by-one", "batched", "concurrent", "text-prompts"])
def test_loglikelihood_requests_give_the_engines_logprobs(served, args):
    url, server = served
    lm = client(url, **args)
    greedy = server.llm.tokenizer.decode(greedy_ids(server, server.llm.tokenizer.encode(CONTEXTS[0]), 3))
    pairs = [(CONTEXTS[0], greedy)] + [(c, " and then the end") for c in CONTEXTS]
    got = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)])
    for pair, (ll, is_greedy) in zip(pairs, got):
        context, continuation = lm._encode_pair(*pair)  # lm-eval's own split into tokens
        want_ll, want_greedy = reference_loglikelihood(server, context, continuation)
        assert ll == pytest.approx(want_ll, abs=1e-3) and is_greedy == want_greedy
    assert got[0][1] and not got[1][1]  # the engine's own continuation is greedy; the made-up one is not


def test_rolling_loglikelihood_scores_the_whole_text_after_the_prefix_token(served):
    url, server = served
    lm = client(url)
    text = "Once upon a time, there was a little girl who loved to read books about the sea."
    [got] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    ids = server.llm.tokenizer(text, add_special_tokens=False).input_ids
    assert lm.prefix_token_id is not None and len(ids) < CAPACITY - 2  # one window: [prefix] + the text
    assert got == pytest.approx(reference_loglikelihood(server, [lm.prefix_token_id], ids)[0], abs=1e-3)


def test_generation_requests_give_the_engines_greedy_text(served):
    url, server = served
    lm = client(url)
    tok = server.llm.tokenizer
    kwargs = {"until": ["."], "max_gen_toks": 12, "do_sample": False, "temperature": 0.0}
    got = lm.generate_until([Instance("generate_until", {}, (c, dict(kwargs)), i) for i, c in enumerate(CONTEXTS)])
    for context, text in zip(CONTEXTS, got):
        ids = greedy_ids(server, tok.encode(context), 12)
        if tok.eos_token_id in ids:
            ids = ids[:ids.index(tok.eos_token_id)]
        assert text == tok.decode(ids).split(".")[0]


@pytest.mark.real
def test_lm_eval_accuracy_through_the_server_equals_transformers(tmp_path, smollm2_gguf):
    from tests.test_real_models import converted

    engine = tmp_path / "smollm2-fp32"
    build_engine(BuildOptions(out=engine, source=str(smollm2_gguf), dtype="fp32", quiet=True, kv_slots=4))
    tasks = write_tasks(tmp_path / "tasks", fetch_asset("text", quiet=True), cloze=24, topic=12)
    with serving(Engine.load(engine)) as (base, server):
        served = lm_eval_server.run_lm_eval(
            "local-completions", {"model": "tiny", "base_url": base + "/v1/completions",
                                  "max_length": server.llm.max_tokens() + 1}, tasks, batch_size=4)
    reference = lm_eval_server.run_lm_eval("hf", {"pretrained": str(converted("smollm2-135m")), "dtype": "float32"},
                                           tasks)
    assert lm_eval_server.metrics(served) == lm_eval_server.metrics(reference)
    items = lm_eval_server.compare(served, reference)
    assert items["optimizer_cloze"]["same_pick"] == 24 and items["optimizer_cloze"]["max_abs_ll_diff"] < 1e-3
    assert items["optimizer_topic"]["same_text"] == 12, items["optimizer_topic"]["differing"]
    accuracy = lm_eval_server.metrics(served)
    assert accuracy["optimizer_cloze"]["acc"] > 0.5  # a real model reads the stories (chance: 0.25)
    assert accuracy["optimizer_topic"]["exact_match"] > 0.2  # and names articles
