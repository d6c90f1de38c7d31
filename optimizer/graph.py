"""A small builder over `onnx_ir.tape.Tape`: scoped node names, cached constants, weights.

    b = GraphBuilder()
    with b.scope("layers.0.attn"):
        y = b.op("MatMul", x, b.weight("q_proj", w_t))   # node "layers.0.attn/MatMul_3"
    model = b.model(inputs=[x], outputs=[y])
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import onnx_ir as ir

OPSET = 21  # ai.onnx; 21 has blocked DequantizeLinear and Gelu(approximate) (20)
MS_DOMAIN = "com.microsoft"


class GraphBuilder:
    def __init__(self) -> None:
        self.tape = ir.tape.Tape()
        self._scopes: list[str] = []
        self._counter = 0
        self._consts: dict[tuple[str, bytes, tuple[int, ...]], ir.Value] = {}

    @contextmanager
    def scope(self, name: str) -> Iterator[None]:
        self._scopes.append(name)
        try:
            yield
        finally:
            self._scopes.pop()

    def _name(self, base: str) -> str:
        self._counter += 1
        return "/".join([*self._scopes, f"{base}_{self._counter}"])

    def op(self, op_type: str, *inputs: ir.Value | None, domain: str = "",
           **attributes: object) -> ir.Value:
        name = self._name(op_type)
        out = self.tape.op(op_type, list(inputs), attributes or None, domain=domain, name=name)
        out.name = name
        return out

    def op_multi(self, op_type: str, *inputs: ir.Value | None, num_outputs: int,
                 domain: str = "", **attributes: object) -> Sequence[ir.Value]:
        """An op with several outputs; attributes named `attr_x` become attribute `x`
        (for ops such as Split whose attribute is itself called num_outputs)."""
        attributes = {k.removeprefix("attr_"): v for k, v in attributes.items()}
        name = self._name(op_type)
        outs = self.tape.op_multi_out(op_type, list(inputs), attributes or None,
                                      num_outputs=num_outputs, domain=domain, name=name)
        for i, out in enumerate(outs):
            out.name = f"{name}:{i}"
        return outs

    def const(self, value: np.ndarray | float | int | Sequence[int], dtype: np.dtype | type | None = None) -> ir.Value:
        """A small constant (shapes, scalars), shared by every use of the same value."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.tobytes(), array.shape)
        if key not in self._consts:
            self._consts[key] = self.tape.initializer(ir.tensor(array), name=self._name("const"))
        return self._consts[key]

    def weight(self, name: str, array: np.ndarray | ir.LazyTensor) -> ir.Value:
        """A named initializer holding a weight: an array (used, not copied), or a lazy tensor
        (read when the model is written; see optimizer.capture)."""
        tensor = array if isinstance(array, ir.LazyTensor) else ir.tensor(array, name=name)
        return self.tape.initializer(tensor, name=name)

    def model(self, inputs: Sequence[ir.Value], outputs: Sequence[ir.Value],
              name: str = "decoder") -> ir.Model:
        graph = ir.Graph(inputs, outputs, nodes=self.tape.nodes,
                         initializers=self.tape.initializers,
                         opset_imports={"": OPSET, MS_DOMAIN: 1}, name=name)
        return ir.Model(graph, ir_version=10, producer_name="optimizer")


def input_value(name: str, dtype: ir.DataType, shape: Sequence[int | str]) -> ir.Value:
    return ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(list(shape)))
