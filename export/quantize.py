"""INT8 graphs for ONNX Runtime on the CPU: static QDQ quantization of the convolution trunk.

``quantize_graphs(folder, model)`` turns the float32 ``encoder.onnx``/``decoder.onnx`` that ``export_onnx``
wrote into int8 graphs in place; the bundle writer (``export_bundle(..., precision="int8")``, ``meltok-export
--precision int8``) calls it, so an int8 bundle is an ordinary bundle whose graphs say ``precision: "int8"``.

What is quantized (``onnxruntime.quantization.quantize_static``, QDQ format):

- ``Conv``, ``MatMul`` and ``Gemm`` nodes of the trunk: weights int8, symmetric, per output channel;
  activations uint8, asymmetric, per tensor (``ACTIVATION_TYPE``: on this project's AVX-512 VNNI CPU the
  u8 x s8 kernels were 1.2-1.9x faster than s8 x s8 ones, at the same accuracy). ONNX Runtime fuses each
  ``DequantizeLinear -> Conv -> QuantizeLinear`` into ``QLinearConv`` (``QGemm``, ``QLinearMatMul``).
- Calibration (MinMax) runs the float32 graphs on real audio (``meltok_export.calibration``).

What stays float32:

- The islands (``meltok_export.islands``: log-mel front end, VQ, vocoder head), found by walking the graph;
  ``island_violations`` checks the written graphs.
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
from meltok_runtime.manifest import GraphEntry, file_sha256

from .calibration import FeedReader, calibration_feeds
from .contract import GRAPH_FILES, graph_specs
from .dependencies import import_onnx, import_quantization
from .islands import float32_islands, island_violations, node_producing
from .op_support import check_tensorrt_ops

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


# ----------------------------------------------------------------------------- graph walks
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


# ----------------------------------------------------------------------------- quantization
def quantize_graph(source, target, graph: str, feeds: list[dict]) -> dict:
    """Quantize the float32 ONNX file ``source`` of ``graph`` into ``target`` (may equal ``source``),
    calibrated on ``feeds``; returns a summary (counts of quantized and float32 nodes, island sizes).

    Raises BundleError when an island of the result is not float32.
    """
    onnx = import_onnx()
    quantization = import_quantization()
    CalibrationMethod, QuantFormat, QuantType = (quantization.CalibrationMethod, quantization.QuantFormat,
                                                 quantization.QuantType)

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
        quantization.quantize_static(onnx_model, str(output), FeedReader(feeds), quant_format=QuantFormat.QDQ,
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
    made_by = node_producing(onnx_model.graph)
    node = next((n for n in onnx_model.graph.node if n.name == name), None)
    return node is not None and any(getattr(made_by.get(i), "op_type", None) == "DequantizeLinear"
                                    for i in node.input)


def tensorrt_skip_reason(onnx_model) -> dict:
    """Why the TensorRT operator check does not apply to an int8 graph, with the check's own count."""
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
    onnx = import_onnx()
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


__all__ = ["ACTIVATION_TYPE", "FLOAT32_LAYERS", "QUANTIZED_OPS", "WEIGHT_TYPE", "float32_layers", "quantize_graph",
           "quantize_graphs", "tensorrt_skip_reason"]
