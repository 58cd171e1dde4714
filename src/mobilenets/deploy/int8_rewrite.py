"""The float graph rewritten so that onnxruntime runs every op of a MobileNet in int8.

onnxruntime has no int8 kernel for ``HardSwish``, ``HardSigmoid`` or ``ReduceMean``:
quantized as they are, each is dequantized, computed in float and requantized. The same
function is computed here by ``Add``/``Mul``/``Clip`` (``QLinearAdd``/``QLinearMul``; a
``Clip`` is absorbed into its input's quantization range) and ``GlobalAveragePool``. Each
element-wise op is a pass over the feature map, so constant factors are folded into
convolution weights where the maths allows:

* ``HardSigmoid(z) = Clip(αz + β, 0, 1)``: when ``z`` comes only from a convolution
  (squeeze-excite's second layer), α and β go into its weight and bias, and only the
  ``Clip`` remains: no pass at all.
* ``HardSwish(x) = x · Clip(x + 3, 0, 6) / 6``: the ``/6`` goes into the weights of the
  convolutions or linear layers that read the result, when every path to them is linear
  (pooling, reshapes, squeeze-excite's gating ``Mul``): two passes. Otherwise (a residual
  ``Add`` reads it) ``x · Clip(x/6 + ½, 0, 1)``: three.

``ReduceMean`` over H, W with ``keepdims`` becomes ``GlobalAveragePool``. The rewritten
graph computes the same function up to float rounding (tested).

Every float ONNX export gets the first fold too (:func:`fold_gates`): OpenCV's DNN importer
fuses ``Mul(a, HardSigmoid(b))`` into ``HardSwish(b)`` without checking that ``a`` is ``b``,
which silently breaks V3's squeeze-excite gate ``x · HardSigmoid(fc2(s))``; with the gate a
``Clip`` of the convolution, nothing matches that pattern.

Constants that element-wise ops read have shape ``(1,)``, not ``()``: quantized, each feeds a
``DequantizeLinear``, and OpenCV 4.x applies that op's ``axis=1`` to a 0-d input and refuses
it. ``Clip``'s bounds stay 0-d, as the ONNX spec asks (they are never quantized).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

#: Ops through which a tensor's scale passes unchanged: ``op(k·x) = k·op(x)`` (``Mul``
#: only when the other factor does not depend on ``x`` too; checked where used).
_LINEAR_OPS = frozenset({"GlobalAveragePool", "ReduceMean", "Flatten", "Reshape", "Mul"})


def int8_friendly(proto: Any) -> Any:
    """A copy of the ONNX model ``proto`` with MobileNets' float-only ops replaced by ops
    onnxruntime runs in int8, fewest element-wise passes first (see the module docstring)."""
    import onnx

    proto = copy.deepcopy(proto)
    _Rewriter(proto.graph).rewrite()
    onnx.checker.check_model(proto)
    return proto


def fold_gates(proto: Any) -> Any:
    """``proto`` changed in place: each ``HardSigmoid`` fed by a convolution alone becomes a
    ``Clip`` with α and β folded into that convolution (squeeze-excite's gate), so that OpenCV
    cannot mistake the gate's product for a hard-swish; everything else is kept as it is."""
    _Rewriter(proto.graph, gates_only=True).rewrite()
    return proto


class _Rewriter:
    """One pass over a graph: the indexes it needs (who produces and who reads each
    tensor), the initializers it changes, and the replacement of each node."""

    def __init__(self, graph: Any, gates_only: bool = False) -> None:
        self.graph = graph
        self.gates_only = gates_only
        self.inits = {t.name: t for t in graph.initializer}
        self.arrays: dict[str, np.ndarray] = {}  # initializers changed by folding
        self.consumers: dict[str, list[int]] = {}
        self.producer: dict[str, int] = {}
        for i, node in enumerate(graph.node):
            for name in node.input:
                self.consumers.setdefault(name, []).append(i)
            for name in node.output:
                self.producer[name] = i
        self.graph_outputs = {o.name for o in graph.output}

    def rewrite(self) -> None:
        from onnx import numpy_helper

        nodes: list[Any] = []
        for i, node in enumerate(self.graph.node):
            nodes += self.replacement(i, node)
        for name, value in self.arrays.items():
            self.inits[name] = numpy_helper.from_array(value, name)
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        used = {name for node in nodes for name in node.input}
        del self.graph.initializer[:]  # the replaced ReduceMeans' axes go
        self.graph.initializer.extend(t for name, t in self.inits.items() if name in used)

    def replacement(self, i: int, node: Any) -> list[Any]:
        """The nodes that compute what ``node`` (the graph's ``i``-th) computed."""
        from onnx import helper

        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        prefix = f"int8_{i}_{node.op_type}"
        if self.gates_only and node.op_type != "HardSigmoid":
            return [node]
        if node.op_type == "HardSwish":
            return self.hard_swish(node.input[0], node.output[0], prefix)
        if node.op_type == "HardSigmoid":
            alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
            if self.fold_into_producer(node.input[0], alpha, beta):
                return [self.clip(node.input[0], node.output[0], 1.0)]
            if self.gates_only:
                return [node]
            return self.hard_sigmoid(node.input[0], node.output[0], alpha, beta, prefix)
        if node.op_type == "ReduceMean" and self.is_spatial_mean(node, attrs):
            return [helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output))]
        return [node]

    # ------------------------------------------------------------------ replacements

    def hard_swish(self, x: str, y: str, prefix: str) -> list[Any]:
        from onnx import helper

        readers = self.linear_readers(y)
        if not readers:
            gate = self.hard_sigmoid(x, prefix + "_gate", 1 / 6, 0.5, prefix)
            return gate + [helper.make_node("Mul", [x, prefix + "_gate"], [y])]
        for reader in readers:
            self.arrays[reader.input[1]] = self.array(reader.input[1]) / np.float32(6)
        return [helper.make_node("Add", [x, self.const("int8_three", 3.0, (1,))], [prefix + "_x3"]),
                self.clip(prefix + "_x3", prefix + "_gate", 6.0),
                helper.make_node("Mul", [x, prefix + "_gate"], [y])]

    def hard_sigmoid(self, x: str, y: str, alpha: float, beta: float, prefix: str) -> list[Any]:
        from onnx import helper

        ax, axb = prefix + "_ax", prefix + "_axb"
        return [helper.make_node("Mul", [x, self.const(f"int8_alpha_{alpha:.6g}", alpha, (1,))], [ax]),
                helper.make_node("Add", [ax, self.const(f"int8_beta_{beta:.6g}", beta, (1,))], [axb]),
                self.clip(axb, y, 1.0)]

    def clip(self, x: str, y: str, high: float) -> Any:
        from onnx import helper

        top = self.const("int8_one", 1.0) if high == 1.0 else self.const("int8_six", high)
        return helper.make_node("Clip", [x, self.const("int8_zero", 0.0), top], [y])

    # ------------------------------------------------------------------ folding

    def fold_into_producer(self, z: str, alpha: float, beta: float) -> bool:
        """Make the convolution producing ``z`` compute ``αz + β`` instead."""
        from onnx import numpy_helper

        if z not in self.producer or z in self.graph_outputs or len(self.consumers[z]) != 1:
            return False
        conv = self.graph.node[self.producer[z]]
        if conv.op_type != "Conv" or not self.own_weight(conv, 1):
            return False
        if len(conv.input) > 2 and not self.own_weight(conv, 2):
            return False
        weight = self.array(conv.input[1])
        if len(conv.input) > 2:
            bias = self.array(conv.input[2])
        else:
            bias = np.zeros(weight.shape[0], dtype=np.float32)
            conv.input.append(f"{conv.input[1]}_int8_bias")
            self.inits[conv.input[2]] = numpy_helper.from_array(bias, conv.input[2])
        self.arrays[conv.input[1]] = weight * np.float32(alpha)
        self.arrays[conv.input[2]] = bias * np.float32(alpha) + np.float32(beta)
        return True

    def linear_readers(self, tensor: str) -> list[Any] | None:
        """The Conv/Gemm nodes that read ``tensor`` through linear ops, or None if any
        path ends anywhere else (a graph output, a residual ``Add``, an activation)."""
        readers, seen, stack = [], set(), [tensor]
        while stack:
            t = stack.pop()
            if t in self.graph_outputs:
                return None
            for i in self.consumers.get(t, []):
                node = self.graph.node[i]
                if i in seen or list(node.input).count(t) != 1:
                    return None  # reached twice: a product of two scaled factors
                seen.add(i)
                if node.op_type in ("Conv", "Gemm") and node.input[0] == t and self.own_weight(node, 1):
                    readers.append(node)
                elif node.op_type in _LINEAR_OPS and (node.op_type == "Mul" or node.input[0] == t):
                    stack.append(node.output[0])
                else:
                    return None
        return readers

    # ------------------------------------------------------------------ graph queries

    def own_weight(self, node: Any, k: int) -> bool:
        """``node``'s input ``k`` is an initializer that no other node reads."""
        return (len(node.input) > k and node.input[k] in self.inits
                and len(self.consumers[node.input[k]]) == 1)

    def is_spatial_mean(self, node: Any, attrs: dict[str, Any]) -> bool:
        from onnx import numpy_helper

        # MobileNets average rank-4 maps only, so axes modulo 4 are the non-negative axes.
        if attrs.get("keepdims", 1) != 1 or len(node.input) < 2 or node.input[1] not in self.inits:
            return False
        axes = sorted(int(a) % 4 for a in numpy_helper.to_array(self.inits[node.input[1]]).ravel())
        return axes == [2, 3]

    def const(self, name: str, value: float, shape: tuple[int, ...] = ()) -> str:
        """A float initializer ``name`` (made once) of ``shape`` holding ``value``."""
        from onnx import numpy_helper

        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(np.full(shape, value, dtype=np.float32), name)
        return name

    def array(self, name: str) -> np.ndarray:
        """Initializer ``name`` as the float32 array being folded into."""
        from onnx import numpy_helper

        if name not in self.arrays:
            self.arrays[name] = numpy_helper.to_array(self.inits[name]).astype(np.float32)
        return self.arrays[name]
