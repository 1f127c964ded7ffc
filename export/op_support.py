"""TensorRT compatibility of an ONNX graph, checked without TensorRT.

The reference is onnx-tensorrt's operator support list for TensorRT 10 (``docs/operators.md`` of
github.com/onnx/onnx-tensorrt, Apache-2.0), stored as ``data/tensorrt10-onnx-ops.tsv``: one row per
ONNX operator with ``Y``/``N`` and the restrictions column. ``check_tensorrt_ops`` reports:

- operators outside the list, marked ``N``, or from a non-standard domain;
- any ``STFT``/``DFT`` (or window-generator) op at all (ONNX has no ISTFT, and neither ONNX Runtime CUDA nor TensorRT < 10.5 has STFT);
- every restriction of the list, checked on the nodes that use the operator (one checker per
  restricted operator; a restricted operator without a checker is itself reported, so a graph never
  passes on a restriction nobody looked at);
- tensor element types TensorRT does not run (DOUBLE is only "cast down with clamping" there;
  strings, unsigned and complex types not at all), including ``Cast`` targets.
"""
from __future__ import annotations

import csv
import functools
from collections import Counter
from dataclasses import dataclass
from importlib import resources

import numpy as np

from meltok_runtime.errors import BundleError

from .dependencies import import_onnx

TABLE_RESOURCE = "data/tensorrt10-onnx-ops.tsv"
# Spectral ops are banned outright: no ISTFT in ONNX, no STFT kernel in ORT's CUDA EP, none in TensorRT < 10.5.
BANNED_OPS = {"STFT": "STFT", "DFT": "DFT", "HannWindow": "window generator", "HammingWindow": "window generator",
              "BlackmanWindow": "window generator", "MelWeightMatrix": "mel matrix generator"}
# ONNX TensorProto element types TensorRT 10 runs natively.
TENSORRT_TYPES = {"FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64", "INT8", "UINT8", "BOOL", "FLOAT8E4M3FN", "INT4"}
RESIZE_COORDINATES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
RESIZE_MODES = {"nearest", "linear"}
RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
PAD_MODES = {"constant", "reflect", "edge", "wrap"}
TOPK_MAX_K = 3840


@dataclass(frozen=True)
class OpSupport:
    """One row of the support list."""

    operator: str
    supported: bool
    restrictions: str


@functools.lru_cache(maxsize=None)
def support_table() -> dict[str, OpSupport]:
    """The TensorRT 10 ONNX operator support list shipped with the package, by operator name."""
    text = resources.files("meltok_export").joinpath(TABLE_RESOURCE).read_text(encoding="utf-8")
    rows = list(csv.reader(text.splitlines(), delimiter="\t"))
    table = {}
    for row in rows[1:]:
        if not row or not row[0].strip():
            continue
        name = row[0].strip()
        table[name] = OpSupport(name, row[1].strip().upper() == "Y", row[2].strip() if len(row) > 2 else "")
    return table


def op_types(onnx_model) -> Counter:
    """Operator names (``domain::Op`` outside the standard domain) and their node counts, subgraphs included."""
    return Counter(_qualified(node) for node, _ in _walk(onnx_model.graph))


def check_tensorrt_ops(onnx_model) -> list[str]:
    """Violations of TensorRT 10's ONNX support list (empty when the graph passes)."""
    onnx = import_onnx()

    try:
        inferred = onnx.shape_inference.infer_shapes(onnx_model, strict_mode=False)
    except Exception:  # shape inference is only used to find tensor types; the raw graph still gets checked
        inferred = onnx_model
    opset = next((o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx")), 0)
    table = support_table()
    context = _Context(inferred, opset)
    violations = []
    for node, _graph in _walk(inferred.graph):
        name, where = _qualified(node), f"{node.op_type} node {node.name or '(unnamed)'}"
        if node.domain not in ("", "ai.onnx"):
            violations.append(f"{where}: operator {name} is from a custom domain; TensorRT has no such operator")
            continue
        if node.op_type in BANNED_OPS:
            violations.append(f"{where}: {BANNED_OPS[node.op_type]} ops are not allowed in meltok graphs "
                              "(use the convolution STFT/ISTFT of meltok.spectral)")
            continue
        entry = table.get(node.op_type)
        if entry is None:
            violations.append(f"{where}: operator {node.op_type} is not in TensorRT 10's ONNX support list")
            continue
        if not entry.supported:
            violations.append(f"{where}: operator {node.op_type} is not supported by TensorRT 10")
            continue
        if entry.restrictions:
            checker = RESTRICTION_CHECKS.get(node.op_type)
            if checker is None:
                violations.append(f"{where}: TensorRT restricts {node.op_type} ({entry.restrictions}) and meltok "
                                  "does not check that restriction; treat the graph as unsupported")
            else:
                violations.extend(f"{where}: {problem}" for problem in checker(node, context))
        violations.extend(f"{where}: {problem}" for problem in _check_types(node, context))
    violations.extend(_check_graph_types(inferred))
    return violations


def ensure_tensorrt_ops(onnx_model, name: str = "graph") -> None:
    """Raise BundleError listing the violations when ``onnx_model`` breaks TensorRT 10's support list."""
    violations = check_tensorrt_ops(onnx_model)
    if violations:
        shown = "; ".join(violations[:5]) + (f"; and {len(violations) - 5} more" if len(violations) > 5 else "")
        raise BundleError(f"the exported {name} graph does not fit TensorRT 10's ONNX operator support "
                          f"list: {shown}. This is an export bug: report it with the model's config")


# ----------------------------------------------------------------------------- graph helpers
def _qualified(node) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def _walk(graph):
    """Every node with its graph, depth first through If/Loop/Scan bodies."""
    onnx = import_onnx()

    for node in graph.node:
        yield node, graph
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    yield from _walk(sub)


class _Context:
    """Constants, producers and tensor types of a (shape-inferred) model, for the checkers."""

    def __init__(self, onnx_model, opset: int):
        onnx = import_onnx()
        from onnx import numpy_helper

        self.opset = opset
        self.constants: dict[str, np.ndarray] = {}
        self.types: dict[str, int] = {}
        self.shapes: dict[str, tuple] = {}
        graphs = [onnx_model.graph] + [sub for node, _ in _walk(onnx_model.graph) for a in node.attribute
                                       for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs)]
        for graph in graphs:
            for init in graph.initializer:
                self.constants[init.name] = numpy_helper.to_array(init)
                self.types[init.name] = init.data_type
            for value in (*graph.input, *graph.output, *graph.value_info):
                tensor = value.type.tensor_type
                if value.type.HasField("tensor_type"):
                    self.types[value.name] = tensor.elem_type
                    if tensor.HasField("shape"):
                        self.shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                                        for d in tensor.shape.dim)
            for node in graph.node:
                if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                    value = next((a for a in node.attribute if a.name == "value"), None)
                    if value is not None:
                        self.constants[node.output[0]] = numpy_helper.to_array(value.t)
                        self.types[node.output[0]] = value.t.data_type

    def input_index(self, node, input_name: str) -> int | None:
        onnx = import_onnx()

        schema = onnx.defs.get_schema(node.op_type, self.opset, node.domain or "")
        names = [formal.name for formal in schema.inputs]
        return names.index(input_name) if input_name in names else None

    def input_value(self, node, input_name: str):
        """``(present, constant value or None)`` for the named formal input of ``node``."""
        index = self.input_index(node, input_name)
        if index is None or index >= len(node.input) or not node.input[index]:
            return False, None
        return True, self.constants.get(node.input[index])


def _attribute(node, name: str, default=None):
    onnx = import_onnx()

    for attribute in node.attribute:
        if attribute.name == name:
            value = onnx.helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _must_be_constant(node, context, input_name: str, what: str = "an initializer") -> list[str]:
    present, value = context.input_value(node, input_name)
    return [f"input `{input_name}` must be {what}"] if present and value is None else []


def _dilations_ones(node, context) -> list[str]:
    dilations = _attribute(node, "dilations", [])
    return [] if all(d == 1 for d in dilations) else [f"dilations must be empty or all ones, got {list(dilations)}"]


def _pool_rank(node, context) -> list[str]:
    kernel = _attribute(node, "kernel_shape", [])
    return [] if len(kernel) in (2, 3) else [f"only 2D or 3D pooling is supported, got a {len(kernel)}D kernel"]


# ----------------------------------------------------------------------------- restriction checkers
def _average_pool(node, context):
    return _pool_rank(node, context) + _dilations_ones(node, context)


def _max_pool(node, context):
    problems = _pool_rank(node, context) + _dilations_ones(node, context)
    if len(node.output) > 1 and node.output[1]:
        problems.append("the `Indices` output is unsupported")
    return problems


def _constant(node, context):
    bad = [a.name for a in node.attribute if a.name in ("sparse_value", "value_string", "value_strings")]
    return [f"attribute `{name}` is unsupported" for name in bad]


def _deform_conv(node, context):
    problems = []
    kernel = _attribute(node, "kernel_shape", [])
    if kernel and len(kernel) not in (1, 2):
        problems.append(f"only 1D or 2D spatial inputs are supported, got {len(kernel)}D")
    pads = list(_attribute(node, "pads", []))
    if pads and pads[: len(pads) // 2] != pads[len(pads) // 2:]:
        problems.append(f"begin and end pads must be equal, got {pads}")
    return problems


def _zero_point(input_name):
    def check(node, context):
        present, value = context.input_value(node, input_name)
        if present and (value is None or np.any(value != 0)):
            return [f"`{input_name}` must be a zero constant"]
        return []
    return check


def _dropout(node, context):
    present, value = context.input_value(node, "training_mode")
    if present and (value is None or bool(np.any(value))):
        return ["`training_mode` must be an initializer that evaluates to False"]
    return []


def _static_input(node, context):
    shape = context.shapes.get(node.input[0])
    return [] if shape is not None and None not in shape else ["the input must have static dimensions"]


def _grid_sample(node, context):
    shape = context.shapes.get(node.input[0])
    return [] if shape is not None and len(shape) == 4 else ["the input must be 4D"]


def _recurrent(node, context):
    problems = []
    activations = list(_attribute(node, "activations", []))
    if _attribute(node, "direction", "forward") == "bidirectional" and activations:
        half = len(activations) // 2
        if activations[:half] != activations[half:]:
            problems.append("bidirectional activations must be the same for both directions")
    if node.op_type == "LSTM":
        if _attribute(node, "input_forget", 0) != 0:
            problems.append("`input_forget` must be 0")
        if _attribute(node, "layout", 0) != 0:
            problems.append("`layout` must be 0")
    return problems


def _hardmax(node, context):
    shape = context.shapes.get(node.input[0])
    axis = _attribute(node, "axis", -1)
    if shape is None or shape[axis] is None:
        return ["the `axis` dimension of the input must be a build-time constant"]
    return []


def _if(node, context):
    then_branch, else_branch = _attribute(node, "then_branch"), _attribute(node, "else_branch")
    problems = []
    for a, b in zip(then_branch.output, else_branch.output):
        if a.name == b.name:
            problems.append(f"both branches output the tensor name {a.name!r}; names must differ")
        if len(a.type.tensor_type.shape.dim) != len(b.type.tensor_type.shape.dim):
            problems.append(f"branch outputs {a.name!r} and {b.name!r} differ in rank")
    return problems


def _layer_norm(node, context):
    return ["only the first output `Y` is supported"] if any(node.output[1:]) else []


def _loop(node, context):
    return ["Loop needs static scan-output lengths and loop-invariant carried shapes, which meltok does not "
            "verify; meltok graphs must not contain loops"]


def _one_hot(node, context):
    return _must_be_constant(node, context, "depth", "a build-time constant")


def _pad(node, context):
    problems = _must_be_constant(node, context, "axes")
    mode = _attribute(node, "mode", "constant")
    if mode not in PAD_MODES:
        problems.append(f"pad mode {mode!r} is unsupported (supported: {sorted(PAD_MODES)})")
    return problems


def _random(node, context):
    return (["`seed` is ignored by TensorRT, so its output would differ from ONNX Runtime's"]
            if _attribute(node, "seed") is not None else [])


def _reduce(node, context):
    return _must_be_constant(node, context, "axes")  # before opset 18 most reductions take an attribute


def _resize(node, context):
    problems = []
    coordinates = _attribute(node, "coordinate_transformation_mode", "half_pixel")
    if coordinates not in RESIZE_COORDINATES:
        problems.append(f"transformation mode {coordinates!r} is unsupported")
    mode = _attribute(node, "mode", "nearest")
    if mode not in RESIZE_MODES:
        problems.append(f"resize mode {mode!r} is unsupported")
    if mode == "nearest" and _attribute(node, "nearest_mode", "round_prefer_floor") not in RESIZE_NEAREST:
        problems.append(f"nearest mode {_attribute(node, 'nearest_mode')!r} is unsupported")
    if _attribute(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        problems.append("only the `stretch` aspect ratio policy is supported")
    if _attribute(node, "antialias", 0):
        problems.append("antialiasing is unsupported")
    axes = _attribute(node, "axes")
    present, _ = context.input_value(node, "scales")
    if present and axes is not None:
        rank = len(context.shapes.get(node.input[0], ()))
        if list(axes) != list(range(rank)):
            problems.append(f"with a `scales` input, `axes` must be 0..rank-1, got {list(axes)}")
    return problems


def _scatter_nd(node, context):
    reduction = _attribute(node, "reduction", "none")
    return [] if reduction == "none" else [f"`reduction` ({reduction!r}) is unsupported"]


def _axes_input(node, context):
    return _must_be_constant(node, context, "axes")


def _unsqueeze(node, context):
    return _must_be_constant(node, context, "axes", "a constant tensor")


def _cumsum(node, context):
    return _must_be_constant(node, context, "axis")


def _top_k(node, context):
    problems = [] if _attribute(node, "sorted", 1) == 1 else ["`sorted` must be 1"]
    present, value = context.input_value(node, "K")
    if present and (value is None or int(np.max(value)) >= TOPK_MAX_K):
        problems.append(f"`K` must be a constant below {TOPK_MAX_K}")
    return problems


RESTRICTION_CHECKS = {
    "AveragePool": _average_pool, "Constant": _constant, "CumSum": _cumsum, "DeformConv": _deform_conv,
    "DequantizeLinear": _zero_point("x_zero_point"), "Dropout": _dropout, "EyeLike": _static_input,
    "GridSample": _grid_sample, "GRU": _recurrent, "Hardmax": _hardmax, "If": _if,
    "LayerNormalization": _layer_norm, "Loop": _loop, "LSTM": _recurrent, "LpPool": _dilations_ones,
    "MaxPool": _max_pool, "OneHot": _one_hot, "Pad": _pad, "QuantizeLinear": _zero_point("y_zero_point"),
    "RandomNormal": _random, "RandomNormalLike": _random, "RandomUniform": _random, "RandomUniformLike": _random,
    "Resize": _resize, "RNN": _recurrent, "ScatterND": _scatter_nd, "Slice": _axes_input,
    "Squeeze": _axes_input, "TopK": _top_k, "Unsqueeze": _unsqueeze,
    **{f"Reduce{kind}": _reduce for kind in ("L1", "L2", "LogSum", "LogSumExp", "Max", "Mean", "Min", "Prod",
                                             "Sum", "SumSquare")},
}


# ----------------------------------------------------------------------------- types
def _type_name(elem_type: int) -> str:
    onnx = import_onnx()

    return onnx.TensorProto.DataType.Name(elem_type)


def _check_types(node, context) -> list[str]:
    problems = []
    if node.op_type == "Cast":
        target = _type_name(_attribute(node, "to"))
        if target not in TENSORRT_TYPES:
            problems.append(f"casts to {target}, which TensorRT does not run")
    if node.op_type in ("ArgMin", "ArgMax") and _attribute(node, "select_last_index", 0):
        problems.append("`select_last_index` must be 0")
    for name in (*node.input, *node.output):
        elem = context.types.get(name)
        if name and elem and _type_name(elem) not in TENSORRT_TYPES:
            problems.append(f"tensor {name!r} has type {_type_name(elem)}, which TensorRT does not run")
    return problems


def _check_graph_types(onnx_model) -> list[str]:
    problems = []
    for value in (*onnx_model.graph.input, *onnx_model.graph.output):
        elem = value.type.tensor_type.elem_type
        if _type_name(elem) not in TENSORRT_TYPES:
            problems.append(f"graph tensor {value.name!r} has type {_type_name(elem)}, which TensorRT does not run")
    return problems
