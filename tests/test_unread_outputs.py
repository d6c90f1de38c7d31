"""dead-code's last step: optional outputs nothing reads become absent (empty names)."""

from __future__ import annotations

import onnx_ir as ir

from tests.pass_helpers import apply, assert_same_outputs, captured, feeds, run


def skip_norm_outputs(model: ir.Model) -> list[list[str]]:
    """Each SkipSimplifiedLayerNormalization's four output names as serialized ("" = absent;
    the serializer drops trailing absent ones, put back here)."""
    proto = ir.to_proto(model)
    return [(list(n.output) + ["", "", ""])[:4] for n in proto.graph.node
            if n.op_type == "SkipSimplifiedLayerNormalization"]


def test_unread_norm_statistics_become_absent(tiny_hf_folders):
    model, loaded = captured(tiny_hf_folders["llama"])
    model, _ = apply(model, ["fuse-rms-norm", "fuse-skip-rms-norm", "fuse-activation"])
    named = skip_norm_outputs(model)
    assert named and all(all(outputs) for outputs in named)  # the rewrite names all four
    inputs = feeds(loaded)
    before = run(model, inputs)
    model, [report] = apply(model, ["dead-code"])
    outputs = skip_norm_outputs(model)
    assert report["changed"] and len(outputs) == len(named)
    # mean and inv_std_var everywhere; the residual sum only where no later layer reads it (the last norm)
    assert all(o[1:3] == ["", ""] and o[0] for o in outputs)
    assert [bool(o[3]) for o in outputs] == [True] * (len(outputs) - 1) + [False]
    assert_same_outputs(before, run(model, inputs))


def test_graph_outputs_and_read_values_keep_their_names(tiny_hf_folders):
    model, _ = captured(tiny_hf_folders["llama"])
    model, _ = apply(model, ["fuse-rms-norm", "fuse-skip-rms-norm"])
    last = [n for n in model.graph if n.op_type == "SkipSimplifiedLayerNormalization"][-1]
    model.graph.outputs.append(last.outputs[1])  # the mean, now read by the caller
    model, _ = apply(model, ["dead-code"])
    assert skip_norm_outputs(model)[-1][1] != ""
