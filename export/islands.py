"""The float32 islands of the exported graphs, found by walking the ONNX graph (the one definition).

The log-mel front end (every node up to the ``Log``: reflect pad, STFT convolution, magnitude, mel matrix
product, clamp), the VQ (every node after the convolution that writes the latent: distances to the
codebook and argmin) and the vocoder head (every node after the backbone: its Linear, ``exp``/clip,
cos/sin, the ISTFT ``ConvTranspose`` and the window normalisation) compute in float32 in every
precision. Who relies on it: the fp16 export checks its graphs against it, the int8 quantizer excludes
these nodes, and TensorRT's weakly typed fp16 build pins them to float32 (``float32_layer_names``, stored in the
manifest at export).
"""
from __future__ import annotations

from meltok_runtime.errors import BundleError

NORMALIZATIONS = {"InstanceNormalization", "LayerNormalization", "GroupNormalization", "BatchNormalization"}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
_SHAPE_ONLY = {"Shape", "Size"}  # read a tensor's shape, not its values: island walks stop there
_FLOAT16, _INT8, _UINT8 = 10, 3, 2  # onnx.TensorProto element types


def node_producing(graph) -> dict:
    """``{tensor name: the node that writes it}``."""
    return {output: node for node in graph.node for output in node.output if output}


def _walk_back(graph, tensors, stop) -> list:
    """Nodes reached backwards from ``tensors``. ``stop(node)``: ``"exclude"`` (not taken, not passed),
    ``"include"`` (taken, not passed) or None (taken and passed); shape reads are taken, not passed."""
    # ``seen`` holds ids of the node objects that ``made_by`` keeps alive for the whole walk.
    made_by, seen, taken, stack = node_producing(graph), set(), [], list(tensors)
    while stack:
        node = made_by.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        action = stop(node)
        if action == "exclude":
            continue
        taken.append(node)
        if action != "include" and node.op_type not in _SHAPE_ONLY:
            stack.extend(name for name in node.input if name)
    return taken


def _single(graph, op_type: str, what: str):
    nodes = [node for node in graph.node if node.op_type == op_type]
    if len(nodes) != 1:
        raise BundleError(f"the {what} graph has {len(nodes)} {op_type} nodes, expected 1: cannot find its float32 "
                          "islands; this is an export bug")
    return nodes[0]


def float32_islands(onnx_model, graph: str) -> dict[str, list]:
    """The nodes of each float32 island of ``graph`` (``"encoder"`` or ``"decoder"``), by island name.

    Encoder: ``log-mel`` (the ``Log`` and everything before it), ``vq`` (the ``ArgMin`` back to, not
    including, the convolution that writes the latent). Decoder: ``head`` (the output back to, and
    including, the first matrix product: the head's Linear); a log-mel decoder (``mel_inversion`` models,
    output ``log_mel``) has no head: ``mel-out`` (the output back to, not including, the last convolution
    or cast: the mel scale and clamp).
    """
    g = onnx_model.graph
    if graph == "encoder":
        log_node, argmin = _single(g, "Log", graph), _single(g, "ArgMin", graph)
        return {"log-mel": _walk_back(g, log_node.output, lambda node: None),
                "vq": _walk_back(g, argmin.output, lambda node: "exclude" if node.op_type == "Conv" else None)}
    if graph == "decoder" and [value.name for value in g.output] == ["log_mel"]:
        last_trunk = ("Conv", "ConvTranspose", "Cast")  # a float16 trunk ends in a Cast to float32
        return {"mel-out": _walk_back(g, ["log_mel"], lambda node: "exclude" if node.op_type in last_trunk else None)}
    if graph == "decoder":
        head = _walk_back(g, [value.name for value in g.output],
                          lambda node: "include" if node.op_type in ("Gemm", "MatMul") else None)
        if not any(node.op_type in ("Gemm", "MatMul") for node in head) or \
                not any(node.op_type == "ConvTranspose" for node in head):
            raise BundleError("the decoder graph's head (Linear, ISTFT ConvTranspose) was not found: cannot keep it "
                              "float32; this is an export bug")
        return {"head": head}
    raise ValueError(f"graph must be 'encoder' or 'decoder', got {graph!r}")


def island_violations(onnx_model, graph: str) -> list[str]:
    """Ways in which ``graph``'s float32 islands are not float32 (empty when they are): quantize/dequantize
    or quantized-operator nodes inside an island, island inputs produced by a ``DequantizeLinear``, casts
    to float16, and island weights that are not float32."""
    g = onnx_model.graph
    made_by = node_producing(g)
    initializers = {init.name: init for init in g.initializer}
    problems = []
    for island, nodes in float32_islands(onnx_model, graph).items():
        for node in nodes:
            where = f"{island} island: {node.op_type} node {node.name!r}"
            if node.op_type in QDQ_OPS or node.op_type.startswith("QLinear") or node.domain not in ("", "ai.onnx"):
                problems.append(f"{where} is a quantization operator")
                continue
            if node.op_type in _SHAPE_ONLY:
                continue
            if node.op_type == "Cast" and any(a.name == "to" and a.i == _FLOAT16 for a in node.attribute):
                problems.append(f"{where} casts to float16")
            for name in node.input:
                source = made_by.get(name)
                if source is not None and source.op_type in QDQ_OPS:
                    problems.append(f"{where} reads {name!r} from {source.op_type} {source.name!r}")
                init = initializers.get(name)
                if init is not None and init.data_type in (_INT8, _UINT8, _FLOAT16):
                    kind = {_INT8: "INT8", _UINT8: "UINT8", _FLOAT16: "FLOAT16"}[init.data_type]
                    problems.append(f"{where} reads the {kind} initializer {name!r}")
    return problems




def island_node_names(onnx_model, graph: str) -> set[str]:
    """Names of every node in ``graph``'s float32 islands."""
    return {node.name for nodes in float32_islands(onnx_model, graph).values() for node in nodes}


def float32_layer_names(onnx_model, graph: str) -> list[str]:
    """What a weakly typed fp16 TensorRT build pins to float32, by exact name (stored in the manifest as
    ``float32_nodes``): the island nodes and every normalisation node (its statistics overflow in fp16)."""
    names = island_node_names(onnx_model, graph)
    names |= {node.name for node in onnx_model.graph.node if node.op_type in NORMALIZATIONS}
    return sorted(names)
