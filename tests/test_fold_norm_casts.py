"""fold-norm-casts: fp16 engines' norms in fp16, without the Casts around them, so the
skip-norm and activation fusions fire on fp16 engines as on fp32 ones."""

from __future__ import annotations

import numpy as np
import pytest

from passes import PassContext
from tests.pass_helpers import apply, captured, counts, feeds, run


@pytest.mark.parametrize("name", ["llama", "gemma3"])  # gemma3: sandwich norms, QK-norm
def test_fp16_norms_lose_their_casts_and_fuse(name, tiny_hf_folders):
    model, loaded = captured(tiny_hf_folders[name], "fp16")
    ctx = PassContext(dtype="fp16", max_positions=64)
    inputs = feeds(loaded, dtype=np.float16)
    model, _ = apply(model, ["fuse-rms-norm"], ctx)
    before = run(model, inputs)
    norms, casts = counts(model)["RMSNormalization"], counts(model)["Cast"]
    model, [report] = apply(model, ["fold-norm-casts"], ctx)
    assert report["changed"] and counts(model)["Cast"] == casts - 2 * norms  # every norm's pair
    after = run(model, inputs)
    for key in before:  # fp16 rounding moves where the weight product is rounded: a few ulps
        scale = max(1.0, float(np.abs(before[key].astype(np.float32)).max()))
        np.testing.assert_allclose(after[key].astype(np.float32), before[key].astype(np.float32),
                                   atol=2e-2 * scale, err_msg=key)
    model, [skip] = apply(model, ["fuse-skip-rms-norm"], ctx)
    assert skip["changed"] and counts(model)["com.microsoft::SkipSimplifiedLayerNormalization"] > 0
    model, _ = apply(model, ["fuse-attention"], ctx)  # QK-norm (gemma3) stays in fp16: no Casts back
    assert counts(model)["Cast"] <= 3  # logits to fp32, GQA's sequence lengths


def test_fp32_engines_are_left_alone(tiny_hf_folders):
    model, _ = captured(tiny_hf_folders["llama"])
    model, _ = apply(model, ["fuse-rms-norm"])
    model, [report] = apply(model, ["fold-norm-casts"])
    assert not report["changed"]
