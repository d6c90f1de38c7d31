"""Where the wall time of a batch-1 CPU decode step goes between onnxruntime's run and our host
code, under given session settings.

    python benchmarks/decode_host.py ENGINE [--threads 2] [--config session.intra_op.allow_spinning=0] \
        [--rounds 4] [--prompt-tokens 128 --new-tokens 64]

Each round generates --new-tokens greedy tokens after a random prompt (numpy seed 0, as
benchmarks/int4_defaults.py) through the runtime's own pieces (runtime.executors' one-slot
executor, Sequence.append / choose, as runtime.generate does) and times, per decode step:
the host work before the run (the executor building the step), the onnxruntime run
(`run_with_iobinding`), the host work after it (reading the logits) and choosing the token.
Prints the medians per round and the decode tok/s. --config adds onnxruntime session config
entries (thread spinning, ...) to the runtime's own session options. Run two settings or two
checkouts one after the other (PYTHONPATH) to compare them.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("engine")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--config", action="append", default=[], help="KEY=VALUE session config entry (repeatable)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()
    import runtime.session as session_module
    from runtime import Engine, SamplingParams
    from runtime.executors import make_executor
    from runtime.sequence import Sequence

    entries = dict(item.split("=", 1) for item in args.config)
    plain = session_module.make_session_options

    def with_entries(*a, **k):
        options = plain(*a, **k)
        for key, value in entries.items():
            options.add_session_config_entry(key, value)
        return options

    session_module.make_session_options = with_entries
    engine = Engine.load(args.engine, threads=args.threads)
    session_module.make_session_options = plain

    session = engine.session.session
    stamps: dict[str, float] = {}
    run = session.run_with_iobinding

    def timed_run(binding, options=None):
        stamps["start"] = time.perf_counter()
        run(binding, options)
        stamps["end"] = time.perf_counter()

    session.run_with_iobinding = timed_run
    vocab = engine.manifest["architecture"]["config"]["vocab_size"]
    prompt = np.random.default_rng(0).integers(100, vocab, args.prompt_tokens).tolist()
    print(f"threads {args.threads}, config {entries or '-'}; medians per decode step (us):")
    for r in range(args.rounds + 1):  # the first round warms up
        seq = Sequence("0", list(prompt), SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True))
        executor = make_executor(engine.session, slots=1, capacity=seq.max_total_tokens)
        executor.pool.admit(seq.request_id, seq.max_total_tokens)
        token = seq.choose(executor.prefill(seq, 0, len(prompt)))
        parts = []
        begin = time.perf_counter()
        while True:
            seq.append(token)
            if seq.finished:
                break
            t0 = time.perf_counter()
            logits = executor.decode([seq])
            t1 = time.perf_counter()
            token = seq.choose(logits[0])
            t2 = time.perf_counter()
            parts.append((stamps["start"] - t0, stamps["end"] - stamps["start"], t1 - stamps["end"], t2 - t1))
        elapsed = time.perf_counter() - begin
        executor.release(seq)
        executor.pool.release(seq.request_id)
        if r == 0:
            continue
        before, ort_run, after, choose = (statistics.median(p) * 1e6 for p in zip(*parts))
        print(f"round {r}: {(args.new_tokens - 1) / elapsed:.1f} tok/s | before run {before:.0f} | run {ort_run:.0f} "
              f"| after run {after:.0f} | choose {choose:.0f} | host {before + after + choose:.0f}")


if __name__ == "__main__":
    main()
