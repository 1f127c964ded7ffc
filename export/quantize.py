"""INT8 graphs for ONNX Runtime on the CPU: static QDQ quantization of the convolution trunk.

``quantize_graphs(folder, model)`` turns the float32 ``encoder.onnx``/``decoder.onnx`` that ``export_onnx``
wrote into int8 graphs in place; ``export_bundle(..., precision="int8")`` (``meltok-export --precision
int8``) calls it, so an int8 bundle is an ordinary bundle whose graphs say ``precision: "int8"``.

What is quantized (``onnxruntime.quantization.quantize_static``, QDQ format):

- ``Conv``, ``MatMul`` and ``Gemm`` nodes of the trunk: weights int8, symmetric, per output channel;
  activations uint8, asymmetric, per tensor (``ACTIVATION_TYPE``: on this project's AVX-512 VNNI CPU the
  u8 x s8 kernels were 1.2-1.9x faster than s8 x s8 ones, at the same accuracy). ONNX Runtime fuses each
  ``DequantizeLinear -> Conv -> QuantizeLinear`` into ``QLinearConv`` (``QGemm``, ``QLinearMatMul``).
- Calibration (MinMax) runs the float32 graphs on real audio: crops of the export verification clip
  (``export/assets/verify.flac``) at 0, -20 and -40 dB and one crop ending in digital silence, so that the
  ranges cover quiet passages; the decoder is calibrated on the tokens the float32 model gives for them.

What stays float32:

- The islands (``float32_islands``), found by walking the graph, not by name: the log-mel front end (every
  node up to the ``Log``: reflect pad, STFT convolution, magnitude, mel matrix product, clamp), the VQ
  (every node after the convolution that writes the latent: distances to the codebook and argmin), and
  the vocoder head (every node after the backbone: its Linear, ``exp``/clip, cos/sin, the ISTFT
  ``ConvTranspose`` and the window normalisation). ``island_violations`` checks the written graphs.
- Layers that 8-bit activations resolve poorly (``FLOAT32_LAYERS``): those reading the residual stream or a
  raw feature (wide, offset-dominated ranges: stems, down/up-sampling convolutions, 1x1 shortcuts, the
  vocoder's embedding and depthwise convolutions), those writing the latent or the mel, and the attention
  products of two activations (``softmax(q k) v``: 8-bit attention weights zero out the small ones; alone
  they cost a briefly trained edge model 14% of its tokens). Quantized one at a time on the edge preset,
  each of the others cost 1-8% of the tokens or 0.04-0.12 of mel distance. Together they hold about 7% of
  the encoder's and 24% of the decoder's multiply-adds in the paper configuration, mostly the decoder's
  up-sampling convolutions (22%): quantizing those too made the paper decoder 3.4x instead of 2.3x faster
  than PyTorch eager (1 thread), at twice the mel distance on the trained edge model (0.20 instead of 0.10).

Int8 graphs are for ONNX Runtime's CPU execution provider: their uint8 activations have non-zero zero
points, which TensorRT's ONNX parser refuses (``check_tensorrt_ops`` reports every such
``QuantizeLinear``/``DequantizeLinear``); the manifest records that this check was skipped and why.
``onnxruntime.quantization.quant_pre_process`` is not run: it changed neither speed nor accuracy here, and
its symbolic shape inference fails on the decoder.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from meltok_runtime.errors import BundleError
from meltok_runtime.framing import padded_length
from meltok_runtime.manifest import GraphEntry, file_sha256

log = logging.getLogger("meltok_export")

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
ACTIVATION_TYPE = "QUInt8"
WEIGHT_TYPE = "QInt8"
# Trunk layers kept in float32, by the module scope in the node name (``/encoder/down.0/downsample/conv/Conv``).
FLOAT32_LAYERS = {
    "/encoder/patcher/": "stem: reads the log-mel, whose level offset dominates the range",
    "/encoder/conv_in/": "stem: reads the Haar sub-bands of the log-mel",
    "/encoder/conv_out/": "writes the latent the VQ compares with the codebook",
    "/quant_conv/": "writes the latent the VQ compares with the codebook",
    "/post_quant_conv/": "reads the codebook rows",
    "/decoder/conv_in/": "reads the codebook rows",
    "/decoder/conv_out/": "writes the mel",
    "/decoder/unpatcher/": "writes the mel",
    "/downsample/": "reads the residual stream",
    "/upsample/": "reads the residual stream",
    "/nin_shortcut/": "reads the residual stream",
    "/backbone/embed/": "reads the mel",
    "/dwconv/": "reads the residual stream",
}
CALIBRATION_CROPS = 4
CALIBRATION_SECONDS = 2.0
CALIBRATION_GAINS = (1.0, 0.1, 0.01)  # 0, -20, -40 dB, in turn over the crops
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
_SHAPE_ONLY = {"Shape", "Size"}  # read a tensor's shape, not its values: island walks stop there


# ----------------------------------------------------------------------------- graph walks
def _producers(graph) -> dict:
    return {output: node for node in graph.node for output in node.output if output}


def _walk_back(graph, tensors, stop) -> list:
    """Nodes reached backwards from ``tensors``. ``stop(node)``: ``"exclude"`` (not taken, not passed),
    ``"include"`` (taken, not passed) or None (taken and passed); shape reads are taken, not passed."""
    # ``seen`` holds ids of the node objects that ``producers`` keeps alive for the whole walk.
    producers, seen, taken, stack = _producers(graph), set(), [], list(tensors)
    while stack:
        node = producers.get(stack.pop())
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
    including, the first matrix product: the head's Linear).
    """
    g = onnx_model.graph
    if graph == "encoder":
        log_node, argmin = _single(g, "Log", graph), _single(g, "ArgMin", graph)
        return {"log-mel": _walk_back(g, log_node.output, lambda node: None),
                "vq": _walk_back(g, argmin.output, lambda node: "exclude" if node.op_type == "Conv" else None)}
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
    or quantized-operator nodes inside an island, island inputs produced by a ``DequantizeLinear``, and
    island weights that are not float32."""
    import onnx

    g = onnx_model.graph
    producers = _producers(g)
    initializers = {init.name: init for init in g.initializer}
    problems = []
    for island, nodes in float32_islands(onnx_model, graph).items():
        for node in nodes:
            where = f"{island} island: {node.op_type} node {node.name!r}"
            if node.op_type in _QDQ_OPS or node.op_type.startswith("QLinear") or node.domain not in ("", "ai.onnx"):
                problems.append(f"{where} is a quantization operator")
                continue
            if node.op_type in _SHAPE_ONLY:
                continue
            for name in node.input:
                source = producers.get(name)
                if source is not None and source.op_type in _QDQ_OPS:
                    problems.append(f"{where} reads {name!r} from {source.op_type} {source.name!r}")
                init = initializers.get(name)
                if init is not None and init.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
                    problems.append(f"{where} reads the {onnx.TensorProto.DataType.Name(init.data_type)} "
                                    f"initializer {name!r}")
    return problems


def float32_layers(onnx_model, graph: str) -> dict[str, str]:
    """Trunk nodes of ``QUANTIZED_OPS`` kept float32 besides the islands: node name -> reason (node names
    must be unique, as ``_prepare`` makes them)."""
    initializers = {init.name for init in onnx_model.graph.initializer}
    island_nodes = {node.name for nodes in float32_islands(onnx_model, graph).values() for node in nodes}
    kept = {}
    for node in onnx_model.graph.node:
        if node.op_type not in QUANTIZED_OPS or node.name in island_nodes:
            continue
        reason = next((why for scope, why in FLOAT32_LAYERS.items() if scope in node.name), None)
        if reason is None and node.op_type in ("MatMul", "Gemm") and not any(i in initializers for i in node.input[:2]):
            reason = "product of two activations (attention)"
        if reason is not None:
            kept[node.name] = reason
    return kept


# ----------------------------------------------------------------------------- preparation
def _prepare(onnx_model) -> None:
    """In place: every node gets a unique name (``nodes_to_exclude`` works by name), and tensor-valued
    ``Constant`` nodes become initializers (the quantizer treats a Constant's output as an activation:
    a convolution weight held in one would be quantized per tensor, as uint8, at run time)."""
    names, kept = set(), []
    for index, node in enumerate(onnx_model.graph.node):
        if not node.name or node.name in names:
            node.name = f"{node.name or node.op_type}__{index}"
        names.add(node.name)
        value = node.attribute[0] if node.op_type == "Constant" and len(node.attribute) == 1 else None
        if value is not None and value.name == "value" and node.domain in ("", "ai.onnx"):
            tensor = onnx_model.graph.initializer.add()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
        else:
            kept.append(node)
    del onnx_model.graph.node[:]
    onnx_model.graph.node.extend(kept)


def calibration_audio(sample_rate: int, hop: int, compression: int, clip: np.ndarray | None = None, *,
                      crops: int = CALIBRATION_CROPS, seconds: float = CALIBRATION_SECONDS) -> list[np.ndarray]:
    """Calibration inputs ``[1, samples]`` float32: ``crops`` crops of ``clip`` (default: the verification
    clip) spread over it, at the levels of ``CALIBRATION_GAINS`` in turn, and one crop whose second half is
    digital silence (the log-mel floor). Each is padded as the runtime pads."""
    if clip is None:
        from .verify import verify_audio

        clip = verify_audio(sample_rate)
    clip = np.asarray(clip, dtype=np.float32)
    length = min(padded_length(int(seconds * sample_rate), hop, compression),
                 padded_length(clip.shape[0], hop, compression))
    clip = np.pad(clip, (0, max(0, length - clip.shape[0])))
    offsets = np.linspace(0, clip.shape[0] - length, crops).astype(int)
    audio = [CALIBRATION_GAINS[i % len(CALIBRATION_GAINS)] * clip[o:o + length] for i, o in enumerate(offsets)]
    silent = clip[offsets[-1]:offsets[-1] + length].copy()
    silent[length // 2:] = 0.0
    audio.append(silent)
    return [np.ascontiguousarray(a[None], dtype=np.float32) for a in audio]


class _Feeds:
    """A ``CalibrationDataReader`` over a list of feed dicts."""

    def __init__(self, feeds: list[dict]):
        self.feeds, self._next = feeds, iter(feeds)

    def get_next(self):
        return next(self._next, None)

    def __len__(self):
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int):
        self._next = iter(self.feeds[start_index:end_index])


def calibration_feeds(model, audio: list[np.ndarray] | None = None) -> dict[str, list[dict]]:
    """Feeds of both graphs: the audio for the encoder, the float32 model's tokens of it for the decoder."""
    import torch

    if audio is None:
        audio = calibration_audio(model.sample_rate, model.hop_length, model.config.tokenizer.compression)
    with torch.inference_mode():
        tokens = [model.tokenize(torch.from_numpy(a)).numpy().astype(np.int32) for a in audio]
    return {"encoder": [{"audio": a} for a in audio], "decoder": [{"tokens": t} for t in tokens]}


# ----------------------------------------------------------------------------- quantization
def quantize_graph(source, target, graph: str, feeds: list[dict]) -> dict:
    """Quantize the float32 ONNX file ``source`` of ``graph`` into ``target`` (may equal ``source``),
    calibrated on ``feeds``; returns a summary (counts of quantized and float32 nodes, island sizes).

    Raises BundleError when an island of the result is not float32.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    onnx_model = onnx.load(str(source))
    metadata = {prop.key: prop.value for prop in onnx_model.metadata_props}
    _prepare(onnx_model)
    islands = float32_islands(onnx_model, graph)
    layers = float32_layers(onnx_model, graph)
    exclude = sorted({node.name for nodes in islands.values() for node in nodes} | set(layers))
    candidates = [node.name for node in onnx_model.graph.node
                  if node.op_type in QUANTIZED_OPS and node.name not in set(exclude)]
    if not candidates:
        raise BundleError(f"the {graph} graph has no {'/'.join(QUANTIZED_OPS)} node left to quantize; "
                          "this is an export bug")
    with tempfile.TemporaryDirectory(prefix="meltok-quantize-") as scratch, _quiet_preprocessing_advice():
        output = Path(scratch) / "int8.onnx"
        quantize_static(onnx_model, str(output), _Feeds(feeds), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True, reduce_range=False,
                        activation_type=getattr(QuantType, ACTIVATION_TYPE),
                        weight_type=getattr(QuantType, WEIGHT_TYPE), nodes_to_exclude=exclude,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        quantized = onnx.load(str(output))
    problems = island_violations(quantized, graph)
    if problems:
        raise BundleError(f"the int8 {graph} graph quantized a float32 island: {'; '.join(problems[:3])}; "
                          "this is an export bug")
    counts = {op: sum(1 for n in quantized.graph.node if n.op_type == op) for op in ("QuantizeLinear",
                                                                                    "DequantizeLinear")}
    summary = {
        "quantized_nodes": sum(1 for name in candidates if _is_quantized(quantized, name)),
        "float32_layers": len(layers),
        "float32_islands": {name: len(nodes) for name, nodes in islands.items()},
        "qdq_nodes": counts,
    }
    metadata.update({"meltok.precision": "int8", "meltok.quantization": json.dumps(
        {"activations": f"{ACTIVATION_TYPE} per tensor", "weights": f"{WEIGHT_TYPE} per channel",
         "format": "QDQ", "calibration": "MinMax", **summary}, sort_keys=True)})
    onnx.helper.set_model_props(quantized, metadata)
    quantized.producer_name = "meltok_export"
    quantized.doc_string = f"MelTok {graph} (int8: QDQ trunk, float32 islands)"
    temporary = Path(target).with_name(f".{Path(target).name}.int8")
    onnx.save(quantized, str(temporary))
    os.replace(temporary, target)
    return summary


class _DropAdvice(logging.Filter):
    def filter(self, record):
        return "pre-processing before quantization" not in record.getMessage() \
            and "run pre-processing" not in record.getMessage()


@contextlib.contextmanager
def _quiet_preprocessing_advice():
    """ONNX Runtime's quantizer logs, on the root logger, advice to run ``quant_pre_process`` (which did
    nothing for these graphs, see the module docstring): keep it off the user's console."""
    advice = _DropAdvice()
    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def _is_quantized(onnx_model, name: str) -> bool:
    """Whether the node called ``name`` reads a dequantized weight or activation."""
    producers = _producers(onnx_model.graph)
    node = next((n for n in onnx_model.graph.node if n.name == name), None)
    return node is not None and any(getattr(producers.get(i), "op_type", None) == "DequantizeLinear"
                                    for i in node.input)


def tensorrt_skip_reason(onnx_model) -> dict:
    """Why the TensorRT operator check does not apply to an int8 graph, with the check's own count."""
    from .op_support import check_tensorrt_ops

    violations = check_tensorrt_ops(onnx_model)
    return {"skipped": "int8 bundles are for ONNX Runtime on the CPU: uint8 activations with non-zero zero "
                       "points, which TensorRT's ONNX parser refuses (it takes symmetric int8 QDQ only); "
                       "export fp16 for TensorRT",
            "violations": len(violations), "first": violations[:2]}


def quantize_graphs(folder, model, *, audio: list[np.ndarray] | None = None,
                    graphs=("encoder", "decoder")) -> tuple[dict[str, GraphEntry], dict]:
    """Quantize ``folder``'s float32 ``<graph>.onnx`` files (written by ``export_onnx``) in place.

    ``model`` (the float32 ``MelTok`` they were exported from) gives the decoder's calibration tokens;
    ``audio``: calibration inputs ``[1, samples]`` (default ``calibration_audio``). Returns the new
    GraphEntries (precision ``"int8"``) and a record for the manifest (with ``"tensorrt_ops"``: why the
    TensorRT operator check is skipped for the int8 graphs, and what it reports on them).
    """
    import onnx

    from .onnx_export import GRAPH_FILES, graph_specs

    folder = Path(folder)
    feeds = calibration_feeds(model, audio)
    entries, record = {}, {"activations": f"{ACTIVATION_TYPE}, asymmetric, per tensor",
                           "weights": f"{WEIGHT_TYPE}, symmetric, per output channel", "format": "QDQ",
                           "operators": list(QUANTIZED_OPS),
                           "calibration": {"method": "MinMax", "inputs": len(feeds["encoder"]),
                                           "samples": int(feeds["encoder"][0]["audio"].shape[-1]),
                                           "audio": "crops of export/assets/verify.flac at 0/-20/-40 dB and "
                                                    "one half silent; decoder: the float32 model's tokens"},
                           "float32": "islands (log-mel, VQ, head) and FLOAT32_LAYERS of meltok_export.quantize",
                           "execution": "ONNX Runtime CPUExecutionProvider", "graphs": {}}
    specs = graph_specs(model)
    skipped = {}
    for name in graphs:
        path = folder / GRAPH_FILES[name]
        log.info("quantizing the %s graph to int8 (calibrating on %d inputs)", name, len(feeds[name]))
        record["graphs"][name] = quantize_graph(path, path, name, feeds[name])
        skipped[name] = tensorrt_skip_reason(onnx.load(str(path)))
        inputs, outputs = specs[name]
        entries[name] = GraphEntry(file=path.name, sha256=file_sha256(path), precision="int8",
                                   inputs=inputs, outputs=outputs)
    record["tensorrt_ops"] = {"skipped": next(iter(skipped.values()))["skipped"],
                              "checked": "the float32 graphs the int8 ones were quantized from passed",
                              "int8_violations": {name: entry["violations"] for name, entry in skipped.items()},
                              "first": [v for entry in skipped.values() for v in entry["first"]][:2]}
    return entries, record


__all__ = ["ACTIVATION_TYPE", "FLOAT32_LAYERS", "QUANTIZED_OPS", "WEIGHT_TYPE", "calibration_audio",
           "calibration_feeds", "float32_islands", "float32_layers", "island_violations", "quantize_graph",
           "quantize_graphs", "tensorrt_skip_reason"]
