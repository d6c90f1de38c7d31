"""Real weights (packaged GGUF models): greedy tokens from the engine are identical to
transformers fp32. SmolLM2-135M on 3 prompts (engine built from the GGUF file through the
CLI), Gemma-3-270M on 1 prompt. 64 tokens each, EOS ignored so that all 64 are compared.

The transformers reference loads a safetensors copy of each GGUF model, converted once by
our loader and cached under $OPTIMIZER_CACHE/test/.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimizer.core.assets import cache_dir, fetch_asset
from optimizer.cli import main
from optimizer.models.loader import load_model
from optimizer.pipeline import BuildOptions, build_engine
from runtime import Engine, SamplingParams

pytestmark = pytest.mark.real
N_TOKENS = 64
SMOL_PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]


def converted(asset: str) -> Path:
    """The asset's GGUF model as a safetensors HF folder (converted once, then cached)."""
    target = cache_dir() / "test" / f"{asset}-hf"
    if not (target / "model.safetensors").exists():
        loaded = load_model(fetch_asset(asset, quiet=True), quiet=True)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.rename(tmp, target)
    return target


def hf_greedy(model, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy decoding with transformers' own forward and KV cache, EOS ignored."""
    tokens: list[int] = []
    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt_ids]), use_cache=True)
        for _ in range(n):
            token = int(out.logits[0, -1].argmax())
            tokens.append(token)
            out = model(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens


@pytest.fixture(scope="module")
def smol_engine(tmp_path_factory, smollm2_gguf) -> Path:
    out = tmp_path_factory.mktemp("real") / "smollm2"
    result = CliRunner().invoke(main, ["model", str(smollm2_gguf), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return out


def test_smollm2_greedy_matches_transformers(smol_engine):
    folder = converted("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    engine = Engine.load(smol_engine)
    assert engine.manifest["source"]["kind"] == "gguf"
    for prompt in SMOL_PROMPTS:
        ids = engine.encode(prompt)
        assert ids == tok(prompt).input_ids
        ours = engine.generate_ids(ids, SamplingParams(max_new_tokens=N_TOKENS, ignore_eos=True)).token_ids
        assert ours == hf_greedy(model, ids, N_TOKENS), prompt


def test_smollm2_generate_cli_says_paris(smol_engine):
    result = CliRunner().invoke(main, ["generate", str(smol_engine), "--prompt", "The capital of France is",
                                       "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(" Paris")


def test_smollm2_continuous_batching_equals_each_request_alone(smol_engine):
    """32 requests of mixed prompt and output lengths (real text), 16 slots, so requests also
    queue: each one's greedy tokens under continuous batching equal its tokens alone."""
    import random

    from calibration.data import load_text

    engine = Engine.load(smol_engine)
    corpus = engine.tokenizer(load_text("wiki")[:60_000]).input_ids
    rng = random.Random(0)
    prompts, params, offset = [], [], 0
    for _ in range(32):
        n = rng.randint(4, 64)
        prompts.append(corpus[offset:offset + n])
        offset += n
        params.append(SamplingParams(max_new_tokens=rng.randint(2, 24), ignore_eos=True))
    batched = engine.generate_batch(prompts, params, max_batch=16)
    for i, (ids, p, result) in enumerate(zip(prompts, params, batched)):
        assert result.token_ids == engine.generate_ids(ids, p).token_ids, f"request {i}"
        assert result.text == engine.tokenizer.decode(result.token_ids, skip_special_tokens=True)


def test_gemma3_greedy_matches_transformers(tmp_path):
    folder = converted("gemma-3-270m")
    engine_dir = build_engine(BuildOptions(out=tmp_path / "gemma", source=str(folder), quiet=True))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    engine = Engine.load(engine_dir.path)
    assert engine.manifest["generation"]["needs_bos"]
    ids = engine.encode("The capital of France is")
    assert ids[0] == engine.manifest["generation"]["bos_token_id"]  # Gemma needs BOS
    ours = engine.generate_ids(ids, SamplingParams(max_new_tokens=N_TOKENS, ignore_eos=True)).token_ids
    assert ours == hf_greedy(model, ids, N_TOKENS)


def test_smollm2_int4_engine_matches_fake_quant_and_is_small(tmp_path):
    """Real weights, int4 RTN g64: engine perplexity within 0.5% of the torch fake-quant model
    (short wiki slice), int4 engine at most 35% of the fp32 engine's size."""
    from calibration import quant_config
    from calibration.data import parse_spec, token_windows
    from optimizer.evaluate import engine_logits_fn, perplexity, torch_logits_fn

    folder = converted("smollm2-135m")
    loaded = load_model(folder, quiet=True)
    fp32 = build_engine(BuildOptions(out=tmp_path / "fp32", source=str(folder), quiet=True), loaded=loaded)
    int4 = build_engine(BuildOptions(out=tmp_path / "int4", source=str(folder), quiet=True,
                                     quant=quant_config(method="rtn", bits=4, group_size=64, symmetric=False)),
                        loaded=loaded)
    size = lambda e: sum(f["size"] for f in e.manifest["files"].values())  # noqa: E731
    assert size(int4) <= 0.35 * size(fp32)
    windows = token_windows(loaded.tokenizer, parse_spec("wiki:4x256"))
    engine_ppl = perplexity(engine_logits_fn(Engine.load(int4.path)), windows)["perplexity"]
    torch_ppl = perplexity(torch_logits_fn(loaded.model), windows)["perplexity"]
    assert abs(engine_ppl - torch_ppl) / torch_ppl < 0.005


def test_smollm2_fused_engine_equals_unfused(smol_engine, tmp_path):
    """The default (fused) engine against the unfused one: same greedy tokens, logits allclose."""
    import numpy as np

    from passes import UNFUSED_PIPELINE
    from runtime.session import DecoderSession

    folder = converted("smollm2-135m")
    unfused = build_engine(BuildOptions(out=tmp_path / "unfused", source=str(folder),
                                        passes=UNFUSED_PIPELINE, quiet=True))
    fused, plain = Engine.load(smol_engine), Engine.load(unfused.path)
    assert fused.manifest["kv_cache"]["attention"] == "GroupQueryAttention"
    assert plain.manifest["kv_cache"]["attention"] == "unfused"
    params = SamplingParams(max_new_tokens=N_TOKENS, ignore_eos=True)
    for prompt in SMOL_PROMPTS:
        ids = fused.encode(prompt)
        assert fused.generate_ids(ids, params).token_ids == plain.generate_ids(ids, params).token_ids, prompt
    ids = np.asarray([fused.encode(" ".join(SMOL_PROMPTS))])
    n = ids.shape[1]
    logits = []
    for engine in (fused, plain):
        session = DecoderSession(engine.dir.model_path, engine.dir.kv_cache)
        logits.append(session.forward(ids, np.ones((1, n)), np.arange(n)[None], session.empty_cache(1))[0])
    assert np.abs(logits[0] - logits[1]).max() <= 1e-3 * np.abs(logits[1]).max()


@pytest.mark.parametrize("source", ["safetensors", "gguf"])
def test_smollm2_streamed_build_is_the_in_memory_build(tmp_path, smollm2_gguf, source):
    """--stream on real weights (SmolLM2 as a safetensors folder, or its GGUF file dequantized
    tensor by tensor; plain --quant int4: asymmetric groups, the 8-bit tied head gathered from
    its codes): the same engine bytes."""
    model = converted("smollm2-135m") if source == "safetensors" else smollm2_gguf
    digests = []
    for flags in ([], ["--stream"]):
        out = tmp_path / f"e{len(flags)}"
        result = CliRunner().invoke(main, ["model", str(model), "--quant", "int4", "--out", str(out), "-q", *flags])
        assert result.exit_code == 0, result.output
        digests.append({f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in out.glob("model.onnx*")})
    assert digests[0] == digests[1]
