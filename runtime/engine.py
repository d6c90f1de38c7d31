"""`Engine`: a loaded, verified engine directory with its tokenizer and onnxruntime session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from optimizer.artifact import EngineDir, load_engine
from optimizer.errors import EngineError
from runtime.detokenize import IncrementalDetokenizer
from runtime.generate import GenerationResult, generate_ids
from runtime.sampling import SamplingParams
from runtime.session import DecoderSession, KvSpec


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
             verify: bool = True, quiet: bool = True) -> "Engine":
        engine_dir = load_engine(path, verify=verify, quiet=quiet)
        kv = KvSpec.from_manifest(engine_dir.manifest["kv_cache"])
        session = DecoderSession(engine_dir.model_path, kv, provider=provider, threads=threads)
        tokenizer = None
        if engine_dir.has_tokenizer:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(engine_dir.path)
        return cls(engine_dir, session, tokenizer)

    @property
    def manifest(self) -> dict[str, Any]:
        return self.dir.manifest

    def encode(self, prompt: str) -> list[int]:
        if self.tokenizer is None:
            raise EngineError("this engine has no tokenizer (built from random weights without --tokenizer)",
                              hint="pass token ids instead of text, or rebuild with --tokenizer PATH")
        ids = list(self.tokenizer(prompt).input_ids)
        gen = self.manifest.get("generation", {})
        bos = gen.get("bos_token_id")
        if gen.get("needs_bos") and bos is not None and ids[:1] != [bos]:
            ids.insert(0, bos)  # e.g. Gemma degrades badly without BOS, whatever the tokenizer says
        return ids

    def generate_ids(self, prompt_ids: list[int], params: SamplingParams,
                     on_token: Callable[[int], None] | None = None) -> GenerationResult:
        return generate_ids(self.session, prompt_ids, params, self.eos_token_ids, on_token)

    def generate(self, prompt: str, params: SamplingParams | None = None,
                 on_text: Callable[[str], None] | None = None) -> TextResult:
        """Generate from a text prompt; `on_text` receives the text as it is produced."""
        params = params or SamplingParams()
        detok = IncrementalDetokenizer(self.tokenizer) if self.tokenizer is not None else None
        ids = self.encode(prompt)

        def on_token(token: int) -> None:
            piece = detok.push(token)
            if piece and on_text is not None:
                on_text(piece)

        result = self.generate_ids(ids, params, on_token)
        tail = detok.flush()
        if tail and on_text is not None:
            on_text(tail)
        return TextResult(**vars(result), text=detok.emitted)
