"""MelTok -> two ONNX graphs (``encoder.onnx``, ``decoder.onnx``): the export contract in one place.

Contract (the runtime relies on it):

- encoder: ``audio`` float32 ``[batch, samples]`` (already padded by the caller) -> ``tokens`` int32
  ``[batch, rows, columns]``;
- decoder: ``tokens`` int32 ``[batch, rows, columns]`` -> ``audio`` float32 ``[batch, out_samples]`` with
  ``out_samples = (compression * columns - 1) * hop``.

Batch and length are dynamic; opset 17; simplified with onnxsim; self-describing ``metadata_props``.

Precision ``fp16`` runs the convolution trunk (2D encoder/decoder, quant/post-quant convs, vocoder
backbone) in float16 and keeps float32 islands: the log-mel front end, the VQ distance/argmin and the
codebook lookup, the head's Linear, ``exp``/clip, cos/sin and the ISTFT with its window normalisation,
and every GroupNorm/LayerNorm (their statistics overflow or lose precision in float16; TensorRT warns
about exactly this); attention scales ``q`` before ``q.k`` so that its float16 logits cannot overflow
(``Float16Attention``). The variant is built in torch, so the ONNX file carries explicit ``Cast`` nodes
at every island boundary: what a strongly typed TensorRT network needs.

Precision ``int8`` is not built in torch: the float32 graphs are exported, then quantized by ONNX Runtime
(QDQ, calibrated on real audio) with the same float32 islands; see ``meltok_export.quantize``. Int8 graphs
are for ONNX Runtime on the CPU.
"""
from __future__ import annotations

import copy
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from meltok_runtime.errors import BundleError
from meltok_runtime.manifest import BUNDLE_FORMAT_VERSION, GraphEntry, TensorSpec, file_sha256

log = logging.getLogger("meltok_export")

OPSET = 17
PRECISIONS = ("fp32", "fp16", "int8")
GRAPH_FILES = {"encoder": "encoder.onnx", "decoder": "decoder.onnx"}


def graph_specs(model) -> dict[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]]:
    """Input and output specs of both graphs (names, dtypes, shapes with named dynamic axes)."""
    rows = model.token_rows
    return {
        "encoder": ((TensorSpec("audio", "float32", ("batch", "samples")),),
                    (TensorSpec("tokens", "int32", ("batch", rows, "columns")),)),
        "decoder": ((TensorSpec("tokens", "int32", ("batch", rows, "columns")),),
                    (TensorSpec("audio", "float32", ("batch", "out_samples")),)),
    }


class EncoderGraph(nn.Module):
    """``audio`` float32 ``[B, N]`` -> ``tokens`` int32 ``[B, rows, T']`` (MelTok.tokenize, no padding)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.model.tokenize(audio).to(torch.int32)


class DecoderGraph(nn.Module):
    """``tokens`` int32 ``[B, rows, T']`` -> ``audio`` float32 ``[B, (c * T' - 1) * hop]`` (MelTok.detokenize)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.detokenize(tokens).to(torch.float32)


class PrecisionIsland(nn.Module):
    """Run ``module`` in ``compute`` dtype: cast the input in and the output to ``output``.

    In the exported graph each cast is an ONNX ``Cast`` node (none where the dtype already matches).
    """

    def __init__(self, module: nn.Module, compute: torch.dtype, output: torch.dtype):
        super().__init__()
        self.module = module  # its parameters are already in ``compute``
        self.compute, self.output = compute, output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self.compute)).to(self.output)


class Float16Attention(nn.Module):
    """``meltok.tokenizer.AttnBlock`` for the float16 trunk: the same computation with the ``C**-0.5``
    scale applied to ``q`` before the product instead of to the logits, so that the float16 logits
    ``q.k`` (a sum over C channels) cannot overflow where the scaled result would not."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = self.block
        b, c, h, w = x.shape
        normed = block.norm(x)
        q = (block.q(normed) * block.scale).flatten(2).transpose(1, 2)  # [B, HW, C]
        k = block.k(normed).flatten(2)  # [B, C, HW]
        v = block.v(normed).flatten(2)  # [B, C, HW]
        weights = torch.softmax(block.mask_logits(torch.bmm(q, k), h, w), dim=2)  # [B, HWq, HWk]
        out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, h, w)
        return x + block.proj_out(out)


def _prepare_float16_trunk(module: nn.Module, output: torch.dtype = torch.float16) -> None:
    """In place: every GroupNorm/LayerNorm under ``module`` becomes a float32 island, every attention
    block a ``Float16Attention``."""
    from meltok.tokenizer import AttnBlock

    for name, child in list(module.named_children()):
        if isinstance(child, (nn.GroupNorm, nn.LayerNorm)):
            setattr(module, name, PrecisionIsland(child.float(), torch.float32, output))
        elif isinstance(child, AttnBlock):
            _prepare_float16_trunk(child, output)
            setattr(module, name, Float16Attention(child))
        elif not isinstance(child, PrecisionIsland):
            _prepare_float16_trunk(child, output)


def precision_variant(model, precision: str):
    """A copy of ``model`` whose stages compute in ``precision`` (``model`` itself is not touched).

    ``fp32`` returns a float32 copy. ``fp16`` wraps the trunk modules in float16 islands whose
    outputs the float32 stages of ``MelTok`` (log-mel, VQ, mel scaling and clamp, head) consume.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "int8":
        raise ValueError("int8 graphs are quantized from the float32 graphs by ONNX Runtime "
                         "(meltok_export.quantize), not built in torch: use export_graph or export_onnx")
    variant = copy.deepcopy(model).float().eval()
    if precision == "fp32":
        return variant
    half, single = torch.float16, torch.float32
    for trunk in (variant.encoder, variant.decoder, variant.backbone):
        trunk.half()
        _prepare_float16_trunk(trunk)
    # The backbone's final LayerNorm feeds the float32 head Linear directly.
    variant.backbone.final_layer_norm.output = single
    variant.encoder = PrecisionIsland(variant.encoder, half, half)
    variant.quant_conv = PrecisionIsland(variant.quant_conv.half(), half, single)  # -> VQ distances in float32
    variant.post_quant_conv = PrecisionIsland(variant.post_quant_conv.half(), half, half)
    variant.decoder = PrecisionIsland(variant.decoder, half, single)  # -> mel scale and clamp in float32
    variant.backbone = PrecisionIsland(variant.backbone, half, single)
    return variant


def graph_metadata(model, graph: str, precision: str, model_sha256: str) -> dict[str, str]:
    """``metadata_props`` written into each ONNX file."""
    config = model.config
    from . import __version__

    return {
        "meltok.graph": graph,
        "meltok.precision": precision,
        "meltok.bundle_format_version": str(BUNDLE_FORMAT_VERSION),
        "meltok.model_name": config.name,
        "meltok.model_id": model.model_id,
        "meltok.model_sha256": model_sha256,
        "meltok.sample_rate": str(model.sample_rate),
        "meltok.hop_length": str(model.hop_length),
        "meltok.n_fft": str(config.frontend.n_fft),
        "meltok.n_mels": str(config.frontend.n_mels),
        "meltok.token_rows": str(model.token_rows),
        "meltok.codebook_size": str(model.codebook_size),
        "meltok.compression": str(config.tokenizer.compression),
        "meltok.version": __version__,
    }


def model_sha256(model) -> str:
    """SHA-256 of the model's weights (the hash model files record)."""
    from meltok.modelfile import weights_hash

    return weights_hash(model.state_dict())


def _example_inputs(model, batch: int = 2, columns: int = 3) -> dict[str, torch.Tensor]:
    """Small tracing inputs (tracing runs the model, and float16 convolutions are slow on CPU); every
    length is symbolic in the exported graph, which the dynamic-shape tests check."""
    from meltok_runtime.framing import decoded_length

    samples = decoded_length(columns, model.hop_length, model.config.tokenizer.compression)
    generator = torch.Generator().manual_seed(0)
    return {
        "encoder": 0.1 * torch.randn(batch, samples, generator=generator),
        "decoder": torch.randint(0, model.codebook_size, (batch, model.token_rows, columns),
                                 generator=generator, dtype=torch.int32),
    }


def _to_onnx(module: nn.Module, example: torch.Tensor, inputs, outputs, opset: int):
    """Trace ``module`` with the TorchScript exporter; returns an ``onnx.ModelProto``."""
    import onnx

    dynamic_axes = {spec.name: {axis: name for axis, name in enumerate(spec.shape) if isinstance(name, str)}
                    for spec in (*inputs, *outputs)}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter warns about its own deprecation and about traced shape arithmetic
        # (which the dynamic-shape tests cover); keep those out of the user's console.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buffer, input_names=[s.name for s in inputs],
                          output_names=[s.name for s in outputs], opset_version=opset,
                          dynamic_axes=dynamic_axes, do_constant_folding=True, dynamo=False)
    onnx_model = onnx.load_from_string(buffer.getvalue())
    _set_shapes(onnx_model, (*inputs, *outputs))
    return onnx_model


def _set_shapes(onnx_model, specs) -> None:
    """Write the contract's shapes onto the graph's inputs/outputs (the tracer names only the dynamic axes
    given to it and may mislabel the others)."""
    values = {v.name: v for v in (*onnx_model.graph.input, *onnx_model.graph.output)}
    for spec in specs:
        dims = values[spec.name].type.tensor_type.shape.dim
        del dims[:]
        for size in spec.shape:
            dim = dims.add()
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = int(size)


def simplify(onnx_model, name: str):
    """onnxsim with dynamic shapes kept; on failure the unsimplified graph with a logged warning."""
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(onnx_model)  # checks against the input graph with random inputs
    except Exception as error:  # onnxsim raises bare RuntimeErrors from C++; any failure means "keep the original"
        log.warning("onnxsim could not simplify the %s graph (%s); keeping the unsimplified graph",
                    name, str(error).splitlines()[0][:200] if str(error) else type(error).__name__)
        return onnx_model, False
    if not ok:
        log.warning("onnxsim's check of the simplified %s graph failed; keeping the unsimplified graph", name)
        return onnx_model, False
    return simplified, True


def _check_dynamic(onnx_model, specs, name: str) -> None:
    """The graph's inputs/outputs must keep the names and the named dynamic axes of the contract."""
    values = {v.name: v for v in (*onnx_model.graph.input, *onnx_model.graph.output)}
    for spec in specs:
        if spec.name not in values:
            raise BundleError(f"the exported {name} graph has no tensor {spec.name!r}; this is an export bug")
        dims = values[spec.name].type.tensor_type.shape.dim
        got = tuple(d.dim_param if d.dim_param else d.dim_value for d in dims)
        if got != tuple(spec.shape):
            raise BundleError(f"the exported {name} graph's {spec.name!r} has shape {got}, expected {spec.shape}; "
                              "this is an export bug")


def export_graph(model, name: str, path, *, precision: str = "fp32", opset: int = OPSET,
                 model_hash: str | None = None, simplify_graph: bool = True) -> GraphEntry:
    """Export one graph (``"encoder"`` or ``"decoder"``) of ``model`` to ``path``; returns its GraphEntry.

    Refuses (BundleError) a graph that violates TensorRT 10's ONNX operator support list. ``int8``: the
    float32 graph (which passed that check) quantized for ONNX Runtime CPU (``meltok_export.quantize``).
    """
    import onnx

    from .op_support import ensure_tensorrt_ops

    if name not in GRAPH_FILES:
        raise ValueError(f"graph must be one of {sorted(GRAPH_FILES)}, got {name!r}")
    if precision == "int8":
        from .quantize import calibration_feeds, quantize_graph

        entry = export_graph(model, name, path, precision="fp32", opset=opset, model_hash=model_hash,
                             simplify_graph=simplify_graph)
        quantize_graph(path, path, name, calibration_feeds(model)[name])
        return GraphEntry(file=entry.file, sha256=file_sha256(path), precision="int8", inputs=entry.inputs,
                          outputs=entry.outputs)
    variant = precision_variant(model, precision)
    wrapper = (EncoderGraph if name == "encoder" else DecoderGraph)(variant).eval()
    inputs, outputs = graph_specs(model)[name]
    onnx_model = _to_onnx(wrapper, _example_inputs(model)[name], inputs, outputs, opset)
    simplified = False
    if simplify_graph:
        onnx_model, simplified = simplify(onnx_model, name)
    _check_dynamic(onnx_model, (*inputs, *outputs), name)
    ensure_tensorrt_ops(onnx_model, name)
    metadata = graph_metadata(model, name, precision, model_hash or model_sha256(model))
    metadata["meltok.simplified"] = str(simplified).lower()
    onnx.helper.set_model_props(onnx_model, metadata)
    onnx_model.producer_name, onnx_model.doc_string = "meltok_export", f"MelTok {name} ({precision})"
    onnx.save(onnx_model, str(path))
    return GraphEntry(file=Path(path).name, sha256=file_sha256(path), precision=precision,
                      inputs=inputs, outputs=outputs)


def export_onnx(model, folder, *, precision: str = "fp32", opset: int = OPSET) -> dict[str, GraphEntry]:
    """Write ``encoder.onnx`` and ``decoder.onnx`` for ``model`` into ``folder``; returns their GraphEntries.

    ``int8``: the float32 graphs, then quantized in place (``meltok_export.quantize.quantize_graphs``)."""
    if opset < OPSET:
        raise ValueError(f"opset must be at least {OPSET} (LayerNormalization), got {opset}")
    folder = Path(folder)
    digest = model_sha256(model)
    entries = {}
    source = "fp32" if precision == "int8" else precision
    for name, file in GRAPH_FILES.items():
        log.info("exporting the %s graph (%s, opset %d)", name, source, opset)
        entries[name] = export_graph(model, name, folder / file, precision=source, opset=opset,
                                     model_hash=digest)
    if precision == "int8":
        from .quantize import quantize_graphs

        entries, _ = quantize_graphs(folder, model)
    return entries
