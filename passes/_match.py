"""Small helpers for structural matching on onnx_ir graphs: walk producers and consumers,
read constants, and fail with a reason (`NoMatch`) that the pass report can show."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx_ir as ir

MS_DOMAIN = "com.microsoft"
# our custom-op library's domain: runtime.custom_ops.DOMAIN (not imported: passes stay free of the runtime)
CUSTOM_DOMAIN = "optimizer.ops"


class NoMatch(Exception):
    """The subgraph does not have the expected shape; the message says where it differs."""


def producer(value: ir.Value | None, op_type: str | Sequence[str], domain: str = "") -> ir.Node:
    """The node computing `value`, which must be `op_type` (or one of several) in `domain`."""
    types = (op_type,) if isinstance(op_type, str) else tuple(op_type)
    node = value.producer() if value is not None else None
    if node is None or node.op_type not in types or node.domain != domain:
        got = "a graph input or initializer" if node is None else f"{node.op_type} ({node.name})"
        raise NoMatch(f"expected {'/'.join(types)} producing {value.name if value else None}, found {got}")
    return node


def maybe_producer(value: ir.Value | None, op_type: str, domain: str = "") -> ir.Node | None:
    node = value.producer() if value is not None else None
    if node is not None and node.op_type == op_type and node.domain == domain:
        return node
    return None


def skip_cast(value: ir.Value) -> ir.Value:
    """The value before a Cast, or the value itself."""
    node = maybe_producer(value, "Cast")
    return node.inputs[0] if node is not None else value


def only_consumer(value: ir.Value, op_type: str | Sequence[str], domain: str = "") -> ir.Node:
    types = (op_type,) if isinstance(op_type, str) else tuple(op_type)
    users = [use.node for use in value.uses()]
    if len(users) != 1 or users[0].op_type not in types or users[0].domain != domain:
        raise NoMatch(f"expected {value.name} to feed one {'/'.join(types)}, "
                      f"found {[u.op_type for u in users]}")
    return users[0]


def maybe_only_consumer(value: ir.Value, op_type: str) -> ir.Node | None:
    users = [use.node for use in value.uses()]
    if len(users) == 1 and users[0].op_type == op_type and users[0].domain == "":
        return users[0]
    return None


def constant(value: ir.Value | None) -> np.ndarray:
    """The numpy value of an initializer or Constant node output."""
    if value is not None:
        tensor = value.const_value
        if tensor is None and (node := maybe_producer(value, "Constant")) is not None:
            attr = node.attributes.get("value")
            tensor = attr.value if attr is not None else None
        if tensor is not None:
            return tensor.numpy()
    raise NoMatch(f"expected a constant for {value.name if value else None}")


def attr(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    return a.value if a is not None else default


def expect_const(value: ir.Value, expected: Sequence[int] | float, what: str) -> None:
    got = constant(value)
    if got.shape != np.asarray(expected).shape or not np.allclose(got, expected):
        raise NoMatch(f"{what}: expected {expected}, found {got.tolist()}")


@dataclass(frozen=True)
class Deferred:
    """An initializer's contents computed when the model is written (`read`), not now: the
    streaming build's large weights (see optimizer.capture)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    read: Callable[[], np.ndarray]


def is_deferred(value: ir.Value) -> bool:
    """The initializer behind `value` is read lazily (not held in memory)."""
    return isinstance(value.const_value, ir.LazyTensor)


def deferred_concat(values: Sequence[ir.Value], axis: int) -> Deferred:
    """The concatenation of initializers along `axis`, computed when read."""
    tensors = [v.const_value for v in values]
    shape = list(tensors[0].shape)
    shape[axis] = sum(t.shape[axis] for t in tensors)
    return Deferred(tuple(shape), tensors[0].dtype.numpy(),
                    lambda: np.concatenate([t.numpy() for t in tensors], axis=axis))


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray | Deferred) -> ir.Value:
    """Register a new initializer under a name not yet taken in `graph` (a Deferred one as an
    `ir.LazyTensor`)."""
    base, i = name, 1
    while name in graph.initializers:
        i += 1
        name = f"{base}.{i}"
    dtype = ir.DataType.from_numpy(np.dtype(array.dtype))
    if isinstance(array, Deferred):
        read = array.read
        tensor = ir.LazyTensor(lambda: ir.tensor(read(), name=name), dtype, ir.Shape(array.shape), name=name)
    else:
        tensor = ir.tensor(array, name=name)
    value = ir.Value(name=name, const_value=tensor, type=ir.TensorType(dtype), shape=ir.Shape(array.shape))
    graph.register_initializer(value)
    return value


def replace_value(graph: ir.Graph, old: ir.Value, new: ir.Value) -> None:
    """Point every consumer, and the graph outputs, at `new`, which takes over the old value's
    name (the graph's output names stay the interface) and, where it has none, type and shape."""
    name = old.name
    old.name = (name or "") + ".replaced"
    new.name = name
    new.type = new.type or old.type
    new.shape = new.shape or old.shape
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)


def ensure_ms_opset(model: ir.Model) -> None:
    if MS_DOMAIN not in model.opset_imports:
        model.opset_imports[MS_DOMAIN] = 1
