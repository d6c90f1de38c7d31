"""What a runtime process imports and loads to serve or evaluate an engine: no onnx (whose
import brings ml_dtypes, ~0.8 s here), no torch, and the engine's tokenizer through the class
its files name (runtime.tokenizer_files), with what AutoTokenizer gives."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["The capital of France is", "  leading spaces, tabs\tand\nnewlines", "émigré naïve 東京 🙂",
         "<|im_start|>user\nhi<|im_end|>", ""]


def test_an_engine_loads_and_generates_without_onnx_or_torch(served_engine_dir):
    code = ("import json, sys\n"
            "from runtime import Engine, SamplingParams\n"
            f"e = Engine.load({str(served_engine_dir)!r})\n"
            "e.generate('Hello there', SamplingParams(max_new_tokens=3, ignore_eos=True))\n"
            "print(json.dumps([m for m in ('onnx', 'ml_dtypes', 'torch') if m in sys.modules]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_evaluation_and_calibration_text_need_no_torch():
    """`optimize eval` reads its text through calibration.data: the package's names (the
    quantizers, on torch) load only when asked for; its submodules import by name as before."""
    code = ("import json, sys\n"
            "import optimizer.evaluate, calibration.data\n"
            "seen = [[m for m in ('torch', 'calibration.quantize') if m in sys.modules]]\n"
            "from calibration import awq\n"  # a submodule, as calibration/methods/awq.py takes it
            "seen.append('calibration.quantize' in sys.modules)\n"
            "from calibration import quantize_model, quantize\n"
            "seen.append(quantize_model is quantize.quantize_model)\n"
            "print(json.dumps(seen))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [[], False, True]


def test_the_generic_tokenizer_class_loads_what_autotokenizer_loads(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    from runtime.tokenizer_files import GENERIC, load_tokenizer, tokenizer_class_name

    assert tokenizer_class_name(smol_tokenizer_dir) in GENERIC  # what engines built from GGUF store
    ours, auto = load_tokenizer(smol_tokenizer_dir), AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    assert type(ours) is type(auto)
    for text in TEXTS:
        assert ours.encode(text) == auto.encode(text)
        assert ours(text)["input_ids"] == auto(text)["input_ids"]
        ids = auto.encode(text)
        assert ours.decode(ids) == auto.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == auto.decode(ids, skip_special_tokens=True)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    assert (ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            == auto.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
    assert ours.special_tokens_map == auto.special_tokens_map
    assert (ours.eos_token_id, ours.bos_token_id, ours.pad_token_id) == (auto.eos_token_id, auto.bos_token_id,
                                                                          auto.pad_token_id)
    assert len(ours) == len(auto) and ours.get_vocab() == auto.get_vocab()


def test_other_tokenizer_classes_go_through_autotokenizer(smol_tokenizer_dir, tmp_path, monkeypatch):
    import transformers

    from runtime.tokenizer_files import load_tokenizer, tokenizer_class_name

    folder = tmp_path / "tok"
    shutil.copytree(smol_tokenizer_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "GPT2Tokenizer"  # a model's own class: AutoTokenizer's business
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    asked = []
    real = transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda path: asked.append(path) or real(path))
    assert tokenizer_class_name(folder) == "GPT2Tokenizer"
    tok = load_tokenizer(folder)
    assert asked == [folder] and tok.encode("Hello world") == real(folder).encode("Hello world")
    assert tokenizer_class_name(tmp_path / "nowhere") is None


def test_kv_cache_types():
    import ml_dtypes
    import onnx

    from runtime.session import kv_bind_type, kv_dtype

    assert kv_dtype("fp8") == np.dtype(ml_dtypes.float8_e4m3fn) and kv_dtype("fp8").itemsize == 1
    assert kv_bind_type("fp8") == onnx.TensorProto.FLOAT8E4M3FN
    for name, numpy_type in {"fp32": np.float32, "fp16": np.float16, "int8": np.int8}.items():
        assert kv_dtype(name) is numpy_type and kv_bind_type(name) is numpy_type
    with pytest.raises(KeyError):
        kv_dtype("bf16")
