"""`Engine`: a loaded, verified engine directory with its tokenizer and onnxruntime session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from optimizer.core.artifact import EngineDir, load_engine
from optimizer.core.errors import EngineError, InputError
from runtime.detokenize import IncrementalDetokenizer
from runtime.draft_model import check_same_tokenizer
from runtime.executors import make_executor
from runtime.generate import GenerationResult, generate_ids
from runtime.llm_engine import LLMEngine
from runtime.sampling import SamplingParams
from runtime.sequence import Sequence
from runtime.session import DecoderSession
from runtime.speculative import SpeculativeConfig
from runtime.tokenizer_files import load_tokenizer


@dataclass
class TextResult(GenerationResult):
    text: str = ""


class Engine:
    def __init__(self, engine_dir: EngineDir, session: DecoderSession, tokenizer: Any | None) -> None:
        self.dir, self.session, self.tokenizer = engine_dir, session, tokenizer
        gen = engine_dir.manifest.get("generation", {})
        self.eos_token_ids: list[int] = list(gen.get("eos_token_ids", []))

    @classmethod
    def load(cls, path: str | Path, provider: str = "cpu", threads: int | None = None,
             verify: bool = True, quiet: bool = True, huge_pages: bool | None = None,
             cuda_graph: bool | None = None, int4_kernels: str | None = None) -> "Engine":
        """`huge_pages`: on CPU, back the weights with 2 MiB pages where Linux allows it (faster
        decoding; see runtime.hugepages); False leaves the memory as onnxruntime allocates it;
        None: on unless OPTIMIZER_HUGE_PAGES=0 is set. `cuda_graph`: on CUDA, decode steps replay
        captured CUDA graphs and choose tokens on the GPU (runtime.graph_executor); None: on
        unless OPTIMIZER_CUDA_GRAPH=0 is set. `int4_kernels`: on CUDA, 4-bit linears use kernels
        for batches ("rows") or for one row ("one-row", fastest at batch 1); None: OPTIMIZER_CUDA_INT4,
        else one-row for one-slot engines (runtime.session.INT4_KERNELS)."""
        engine_dir = load_engine(path, verify=verify, quiet=quiet)
        session = DecoderSession(engine_dir.model_path, engine_dir.kv_cache, provider=provider, threads=threads,
                                 quantization=engine_dir.manifest.get("quantization"), huge_pages=huge_pages,
                                 cuda_graph=cuda_graph, int4_kernels=int4_kernels,
                                 custom_ops=tuple(engine_dir.manifest.get("custom_ops", ())))
        tokenizer = None
        if engine_dir.has_tokenizer:
            tokenizer = load_tokenizer(engine_dir.path)
        return cls(engine_dir, session, tokenizer)

    @property
    def manifest(self) -> dict[str, Any]:
        return self.dir.manifest

    def encode(self, prompt: str) -> list[int]:
        if self.tokenizer is None:
            raise EngineError("this engine has no tokenizer (built from random weights without --tokenizer)",
                              hint="pass token ids instead of text, or rebuild with --tokenizer PATH")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate ("\ud800" in JSON): not text a tokenizer takes
            raise InputError(f"the prompt is not valid Unicode: {exc.reason} at character {exc.start}",
                             hint="send UTF-8 text (surrogates only in pairs)") from None
        ids = list(self.tokenizer(prompt).input_ids)
        gen = self.manifest.get("generation", {})
        bos = gen.get("bos_token_id")
        if gen.get("needs_bos") and bos is not None and ids[:1] != [bos]:
            ids.insert(0, bos)  # e.g. Gemma degrades badly without BOS, whatever the tokenizer says
        return ids

    def generate_ids(self, prompt_ids: list[int], params: SamplingParams,
                     on_token: Callable[[int], None] | None = None) -> GenerationResult:
        """One request on its own (the lowest-overhead loop)."""
        return generate_ids(self.session, prompt_ids, params, self.eos_token_ids, on_token)

    def llm(self, max_batch: int | None = None, capacity: int | None = None,
            gpu_memory_fraction: float | None = None, **kwargs: Any) -> LLMEngine:
        """A continuous-batching loop over this engine's cache layout (manifest sizes by default;
        a paged engine's pool from GPU memory with `gpu_memory_fraction`); `kwargs` go to
        LLMEngine (e.g. prefill_chunk, prefix_caching=False, speculative=SpeculativeConfig("ngram", 4)).
        A draft engine must share this engine's tokenizer (checked)."""
        speculative = kwargs.get("speculative")
        if speculative is not None and speculative.draft is not None:
            check_same_tokenizer(self, speculative.draft)
        executor = make_executor(self.session, max_batch, capacity, gpu_memory_fraction, kwargs.get("prefill_budget"))
        return LLMEngine(executor, self.tokenizer, self.eos_token_ids, **kwargs)

    def generate(self, prompt: "str | list[str]", params: SamplingParams | None = None,
                 on_text: Callable[[str], None] | None = None,
                 speculative: SpeculativeConfig | None = None) -> "TextResult | list[TextResult]":
        """Generate from a text prompt (`on_text` receives the text as it is produced), or from
        a list of prompts, batched continuously; results come back in the prompts' order.
        `speculative`: speculative decoding (runtime.speculative; through the batching loop)."""
        params = params or SamplingParams()
        if isinstance(prompt, str) and not params.stop and speculative is None:
            return self._generate_one(prompt, params, on_text)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        results = self.generate_batch([self.encode(p) for p in prompts], params, speculative=speculative)
        if isinstance(prompt, str):
            if on_text is not None and results[0].text:
                on_text(results[0].text)
            return results[0]
        return results

    def generate_batch(self, prompts_ids: list[list[int]], params: "SamplingParams | list[SamplingParams]",
                       max_batch: int | None = None, prefix_caching: bool = True,
                       speculative: SpeculativeConfig | None = None) -> list[TextResult]:
        """Many requests through the continuous-batching loop; results in input order."""
        per_request = params if isinstance(params, list) else [params] * len(prompts_ids)
        llm = self.llm(max_batch=min(len(prompts_ids), max_batch or self.session.kv.slots or 16) or 1,
                       prefix_caching=prefix_caching, speculative=speculative)
        seqs = [llm.make_sequence(ids, p, detokenize=self.tokenizer is not None)
                for ids, p in zip(prompts_ids, per_request)]
        llm.run(seqs)
        return [_text_result(s) for s in seqs]

    def _generate_one(self, prompt: str, params: SamplingParams,
                      on_text: Callable[[str], None] | None) -> TextResult:
        detok = IncrementalDetokenizer(self.tokenizer) if self.tokenizer is not None else None
        ids = self.encode(prompt)

        def on_token(token: int) -> None:
            piece = detok.push(token)
            if piece and on_text is not None:
                on_text(piece)

        result = self.generate_ids(ids, params, on_token if detok is not None else None)
        tail = detok.flush() if detok is not None else ""
        if tail and on_text is not None:
            on_text(tail)
        return TextResult(**vars(result), text=detok.emitted if detok is not None else "")


def _text_result(seq: Sequence) -> TextResult:
    """A finished sequence as a result (times: prefill = arrival to first token)."""
    first = seq.first_token_time or seq.arrival_time
    return TextResult(seq.output_ids, seq.finish_reason or "abort", len(seq.prompt_ids),
                      first - seq.arrival_time, (seq.finish_time or first) - first, text=seq.text)
