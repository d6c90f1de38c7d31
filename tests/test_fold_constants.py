"""fold-constants: constant subexpressions are evaluated at build time; outputs unchanged."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from optimizer.graph import GraphBuilder, input_value
from tests.pass_helpers import apply, assert_same_outputs, counts, run


def test_constant_chain_folded():
    b = GraphBuilder()
    x = input_value("x", ir.DataType.FLOAT, [2, 4])
    shift = b.op("Mul", b.const(np.arange(4, dtype=np.float32)), b.const(2.0, np.float32))  # constant
    y = b.op("Add", x, shift)
    y.name, y.type, y.shape = "y", ir.TensorType(ir.DataType.FLOAT), ir.Shape([2, 4])
    model = b.model([x], [y])
    inputs = {"x": np.ones((2, 4), np.float32)}
    before = run(model, inputs)
    model, [report] = apply(model, ["fold-constants"])
    assert report["changed"] and counts(model) == {"Add": 1}
    assert_same_outputs(before, run(model, inputs))


def test_large_constants_not_materialised(tiny_hf_folders):
    """The tied lm_head Transpose of the embedding stays a node (no second copy on disk)."""
    from tests.pass_helpers import captured

    model, _ = captured(tiny_hf_folders["qwen2-tied"])
    model, _ = apply(model, ["fold-constants"])
    assert counts(model)["Transpose"] >= 1
