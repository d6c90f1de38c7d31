"""Chat workloads with prefix caching and speculative decoding off and on, and llama.cpp's
server on the same model and threads (CPU), in one run.

    python benchmarks/chat_workloads.py --engine ENGINE --out bench-chat/ \
        [--llama-server /path/to/llama-server --gguf SmolLM2-135M-Instruct.Q4_1.gguf]

Workloads (closed loop: a conversation's next turn is sent when its previous answer is done,
with that answer in the history; prompts through the tokenizer's chat template):
  shared-system-prompt  `--chat-requests` one-turn conversations, all at t=0, sharing one
                        system prompt (a wiki passage of about `--system-tokens` tokens, "answer
                        from this document"), each with its own question
  multi-turn            `--conversations` conversations of `--turns` turns, all starting at t=0,
                        each over its own document (turn 1 carries it; later turns add the
                        answers so far and a new question)
Every answer is `--output-tokens` greedy tokens with EOS ignored.

Systems: ours (runtime.LLMEngine in this process, `--max-batch` sequences) with every feature
off, with prefix caching on, and with prefix caching and prompt-lookup speculation on;
llama-server (`--max-batch` slots, its prompt cache on) without and with its n-gram speculation.
Greedy tokens of ours must be the same in every configuration (checked; exit 1 if not).
Results: OUT/results.json (with the command line) and OUT/table.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from _results import write_results  # benchmarks/ is on the path when run as a script
from _servers import llama_server, stream_completion
from speculative import _ngram
from calibration.data import load_text
from optimizer.workload import percentile
from runtime import Engine, SamplingParams

QUESTIONS = ("What is this document about?", "Quote its first sentence.", "Which names does it mention?",
             "Summarize it in two sentences.", "What happened first?", "Quote the sentence with a date.",
             "Who is it about?", "List three facts from it.")


@dataclass
class Conversation:
    index: int
    system: str
    questions: list[str]
    answers: list[str] = field(default_factory=list)

    def prompt(self, tokenizer) -> list[int]:
        """The next turn's prompt: the system prompt, the turns so far, the next question."""
        messages = [{"role": "system", "content": self.system}]
        for question, answer in zip(self.questions, self.answers):
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": self.questions[len(self.answers)]})
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def documents(tokenizer, n: int, tokens: int) -> list[str]:
    """n wiki passages of about `tokens` tokens each."""
    ids = tokenizer(load_text("wiki")[:400_000]).input_ids
    return [tokenizer.decode(ids[i * tokens:(i + 1) * tokens]) for i in range(n)]


def make_workloads(tokenizer, args) -> dict[str, list[Conversation]]:
    shared, *own = documents(tokenizer, 1 + args.conversations, args.system_tokens)
    system = "Answer from this document, quoting it where you can.\n\n" + shared
    chat = [Conversation(i, system, [QUESTIONS[i % len(QUESTIONS)] + f" (question {i})"])
            for i in range(args.chat_requests)]
    multi = [Conversation(i, "Answer from this document, quoting it where you can.\n\n" + doc,
                          [QUESTIONS[(i + t) % len(QUESTIONS)] for t in range(args.turns)])
             for i, doc in enumerate(own)]
    return {"shared-system-prompt": chat, "multi-turn": multi}


def fresh(conversations: list[Conversation]) -> list[Conversation]:
    return [Conversation(c.index, c.system, c.questions) for c in conversations]


def summarize(records: list[tuple[float, float, float, int]], total: float) -> dict:
    """(arrival, first token, last token, output tokens) per request -> the system's figures."""
    ttft = [first - arrival for arrival, first, _, _ in records]
    tpot = [(last - first) / (n - 1) for _, first, last, n in records if n > 1]
    tokens = sum(n for *_, n in records)
    return {"requests": len(records), "total_s": total, "output_tok_s": tokens / total,
            "ttft_s_p50": percentile(ttft, 50), "ttft_s_p95": percentile(ttft, 95),
            "tpot_s_p50": percentile(tpot, 50)}


def run_ours(engine: Engine, conversations: list[Conversation], args, caching: bool, spec) -> dict:
    llm = engine.llm(max_batch=args.max_batch, prefix_caching=caching, speculative=spec)
    llm.warmup()
    params = SamplingParams(max_new_tokens=args.output_tokens, ignore_eos=True)
    convs, live, records, outputs = fresh(conversations), {}, [], {}
    start = time.perf_counter()

    def submit(conv: Conversation) -> None:
        seq = llm.add_request(conv.prompt(engine.tokenizer), params, f"c{conv.index}t{len(conv.answers)}")
        live[seq.request_id] = (conv, time.perf_counter() - start, None)

    for conv in convs:
        submit(conv)
    while llm.has_work:
        for out in llm.step():
            now = time.perf_counter() - start
            conv, arrival, first = live[out.request_id]
            live[out.request_id] = (conv, arrival, first if first is not None else now)
            if out.finished:
                records.append((arrival, live[out.request_id][2], now, len(out.seq.output_ids)))
                outputs[out.request_id] = out.seq.output_ids
                conv.answers.append(out.seq.text)
                if len(conv.answers) < len(conv.questions):
                    submit(conv)
    result = summarize(records, time.perf_counter() - start)
    name = "ours, " + ", ".join(f for f, on in (("prefix caching", caching), (
        f"prompt lookup k={spec.num_tokens}, n>={spec.ngram_min}" if spec else "", spec is not None)) if on)
    result.update(system=name if caching or spec else "ours, prefix caching and speculation off",
                  outputs=outputs, cached_tokens=llm.total_cached_tokens,
                  acceptance=(llm.total_accepted_tokens / llm.total_drafted_tokens
                              if llm.total_drafted_tokens else None))
    return result


def _llama_turns(port: int, conv: Conversation, tokenizer, output_tokens: int, start: float) -> list[tuple]:
    records = []
    while len(conv.answers) < len(conv.questions):
        prompt = conv.prompt(tokenizer)
        arrival = time.perf_counter() - start
        first, last, tokens = stream_completion(port, prompt, output_tokens, cache_prompt=True, start=start)
        records.append((arrival, first, last, len(tokens)))
        conv.answers.append(tokenizer.decode(tokens, skip_special_tokens=True))
    return records


def run_llama(binary: str, gguf: str, conversations: list[Conversation], tokenizer, args, extra: list[str]) -> dict:
    with llama_server(binary, gguf, args.threads, args.max_batch, args.max_batch * args.context, args.port,
                      cache_prompt=True, extra=extra) as command:
        _llama_turns(args.port, Conversation(-1, "Hello.", ["Hi?"]), tokenizer, 8, time.perf_counter())  # warm-up
        convs = fresh(conversations)
        start = time.perf_counter()
        with ThreadPoolExecutor(len(convs)) as pool:
            done = list(pool.map(lambda c: _llama_turns(args.port, c, tokenizer, args.output_tokens, start), convs))
        total = time.perf_counter() - start
    result = summarize([r for rs in done for r in rs], total)
    result.update(system=f"llama.cpp server ({args.max_batch} slots, prompt cache on"
                         + (f", {' '.join(extra)})" if extra else ")"), command=shlex.join(command))
    return result


def table(rows: list[dict]) -> str:
    lines = ["| system | total s | output tok/s | TTFT p50 / p95 s | TPOT p50 ms | cached prompt tokens | acceptance |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        accept = f"{r['acceptance']:.2f}" if r.get("acceptance") is not None else "-"
        lines.append(f"| {r['system']} | {r['total_s']:.2f} | {r['output_tok_s']:.1f} | {r['ttft_s_p50']:.3f} / "
                     f"{r['ttft_s_p95']:.3f} | {r['tpot_s_p50'] * 1e3:.1f} | {r.get('cached_tokens', '-')} | {accept} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engine", required=True)
    ap.add_argument("--out", required=True, type=__import__("pathlib").Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=4)
    ap.add_argument("--system-tokens", type=int, default=384)
    ap.add_argument("--chat-requests", type=int, default=16)
    ap.add_argument("--conversations", type=int, default=4)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--output-tokens", type=int, default=64)
    ap.add_argument("--spec", default="8/3", help="prompt-lookup setting for the speculative rows: k or k/n")
    ap.add_argument("--context", type=int, default=2048, help="llama-server context per slot")
    ap.add_argument("--llama-server")
    ap.add_argument("--gguf")
    ap.add_argument("--llama-spec", default="--spec-type ngram-simple --spec-ngram-simple-size-n 3 "
                                            "--spec-ngram-simple-size-m 8")
    ap.add_argument("--port", type=int, default=8092)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    engine = Engine.load(args.engine, threads=args.threads)
    workloads = make_workloads(engine.tokenizer, args)
    spec = _ngram(args.spec)
    report, failures, text = {}, [], ""
    for name, conversations in workloads.items():
        rows = [run_ours(engine, conversations, args, caching, s)
                for caching, s in ((False, None), (True, None), (True, spec))]
        if args.llama_server and args.gguf:
            rows += [run_llama(args.llama_server, args.gguf, conversations, engine.tokenizer, args, extra)
                     for extra in ([], shlex.split(args.llama_spec))]
        same = all(r["outputs"] == rows[0]["outputs"] for r in rows[1:3])
        if not same:
            failures.append(name)
        report[name] = {"rows": rows, "greedy_tokens_equal": same}
        text += (f"## {name}: {len(conversations)} conversations x {len(conversations[0].questions)} turns, "
                 f"{args.output_tokens} greedy tokens per answer, max batch {args.max_batch}, {args.threads} threads\n\n"
                 f"{table(rows)}\n\ngreedy tokens of ours equal in every configuration: {same}\n\n")
    print(text)
    write_results(args.out, text, {"engine": str(args.engine), "workloads": report})
    if failures:
        sys.exit(f"greedy tokens differ between configurations in {failures}")


if __name__ == "__main__":
    main()
