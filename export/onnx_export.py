"""MelTok -> two ONNX graphs (``encoder.onnx``, ``decoder.onnx``) that hold the export contract.

The contract (names, dtypes, dynamic axes, opset) is declared in ``meltok_export.contract``; this module
traces the model into it, simplifies with onnxsim, checks the result against the contract and TensorRT's
operator list, and writes self-describing ``metadata_props``.

Precision ``fp16`` runs the convolution trunk (2D encoder/decoder, quant/post-quant convs, vocoder
backbone) in float16, with every GroupNorm/LayerNorm in float32 (their statistics overflow or lose
precision in float16; TensorRT warns about exactly this), and leaves the rest of ``MelTok`` in float32:
the float32 islands of ``meltok_export.islands`` (log-mel, VQ, head and ISTFT), which every fp16 graph is
checked against. Attention scales ``q`` before ``q.k`` so that its float16 logits cannot overflow
(``Float16Attention``). The ONNX file carries explicit ``Cast`` nodes at every boundary: what a strongly
typed TensorRT network needs.

Int8 graphs are not built in torch: the bundle writer quantizes the float32 graphs
(``meltok_export.quantize``).
"""
from __future__ import annotations

import copy
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from meltok_runtime.manifest import BUNDLE_FORMAT_VERSION, GraphEntry, file_sha256

from meltok_runtime import __version__
from .contract import GRAPH_FILES, OPSET, check_graph_io, decoder_output, dynamic_axes, graph_specs
from .dependencies import import_onnx, import_onnxsim
from .errors import ContractError, ExportOptionError
from .islands import island_violations
from .op_support import ensure_tensorrt_ops

log = logging.getLogger("meltok_export")
TRACED_PRECISIONS = ("fp32", "fp16")


class EncoderGraph(nn.Module):
    """``audio`` float32 ``[B, N]`` -> ``tokens`` int32 ``[B, rows, T']`` (MelTok.tokenize, no padding)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.model.tokenize(audio).to(torch.int32)


class DecoderGraph(nn.Module):
    """``tokens`` int32 ``[B, rows, T']`` -> ``audio`` float32 ``[B, (c * T' - 1) * hop]`` (MelTok.detokenize);
    a ``mel_inversion`` model: -> ``log_mel`` float32 ``[B, n_mels, c * T']`` (MelTok.decode_features), which
    the runtime's ``MelInverter`` turns into audio."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.log_mel = decoder_output(model) == "log_mel"

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.log_mel:
            return self.model.decode_features(self.model.quantizer.lookup(tokens)).to(torch.float32)
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
    if precision not in TRACED_PRECISIONS:
        raise ExportOptionError(f"precision must be one of {TRACED_PRECISIONS} for a traced graph, got "
                                f"{precision!r}; int8 graphs are quantized from the fp32 ones by the bundle writer")
    variant = copy.deepcopy(model).float().eval()
    if precision == "fp32":
        return variant
    half, single = torch.float16, torch.float32
    vocoder = decoder_output(model) == "audio"  # a mel_inversion model has no backbone (its graph ends at the mel)
    for trunk in (variant.encoder, variant.decoder, *((variant.backbone,) if vocoder else ())):
        trunk.half()
        _prepare_float16_trunk(trunk)
    variant.encoder = PrecisionIsland(variant.encoder, half, half)
    variant.quant_conv = PrecisionIsland(variant.quant_conv.half(), half, single)  # -> VQ distances in float32
    variant.post_quant_conv = PrecisionIsland(variant.post_quant_conv.half(), half, half)
    variant.decoder = PrecisionIsland(variant.decoder, half, single)  # -> mel scale and clamp in float32
    if vocoder:
        # The backbone's final LayerNorm feeds the float32 head Linear directly.
        variant.backbone.final_layer_norm.output = single
        variant.backbone = PrecisionIsland(variant.backbone, half, single)
    return variant


def graph_metadata(model, graph: str, precision: str, model_sha256: str) -> dict[str, str]:
    """``metadata_props`` written into each ONNX file."""
    config = model.config
    log_mel = graph == "decoder" and decoder_output(model) == "log_mel"
    output = {"meltok.decoder_output": "log_mel"} if log_mel else {}  # audio decoders: as before the key existed
    return {
        "meltok.graph": graph,
        **output,
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
    from meltok_runtime.lengths import decoded_length

    samples = decoded_length(columns, model.hop_length, model.config.tokenizer.compression)
    generator = torch.Generator().manual_seed(0)
    return {
        "encoder": 0.1 * torch.randn(batch, samples, generator=generator),
        "decoder": torch.randint(0, model.codebook_size, (batch, model.token_rows, columns),
                                 generator=generator, dtype=torch.int32),
    }


def _to_onnx(module: nn.Module, example: torch.Tensor, inputs, outputs, opset: int):
    """Trace ``module`` with the TorchScript exporter; returns an ``onnx.ModelProto``."""
    onnx = import_onnx()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter warns about its own deprecation and about traced shape arithmetic
        # (which the dynamic-shape tests cover); keep those out of the user's console.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buffer, input_names=[s.name for s in inputs],
                          output_names=[s.name for s in outputs], opset_version=opset,
                          dynamic_axes=dynamic_axes((*inputs, *outputs)), do_constant_folding=True, dynamo=False)
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
    onnxsim = import_onnxsim()
    try:
        simplified, ok = onnxsim.simplify(onnx_model)  # checks against the input graph with random inputs
    except Exception as error:  # onnxsim raises bare RuntimeErrors from C++; any failure means "keep the original"
        log.warning("onnxsim could not simplify the %s graph (%s); keeping the unsimplified graph",
                    name, str(error).splitlines()[0][:200] if str(error) else type(error).__name__)
        return onnx_model, False
    if not ok:
        log.warning("onnxsim's check of the simplified %s graph failed; keeping the unsimplified graph", name)
        return onnx_model, False
    return simplified, True


def export_graph(model, name: str, path, *, precision: str = "fp32", opset: int = OPSET,
                 model_hash: str | None = None, simplify_graph: bool = True) -> GraphEntry:
    """Export one graph (``"encoder"`` or ``"decoder"``) of ``model`` to ``path`` (fp32 or fp16); returns its
    GraphEntry. ContractError when the graph breaks the contract (or, fp16, its float32 islands);
    BundleError when it violates TensorRT 10's ONNX operator support list."""
    onnx = import_onnx()
    if name not in GRAPH_FILES:
        raise ExportOptionError(f"graph must be one of {sorted(GRAPH_FILES)}, got {name!r}")
    variant = precision_variant(model, precision)
    wrapper = (EncoderGraph if name == "encoder" else DecoderGraph)(variant).eval()
    inputs, outputs = graph_specs(model)[name]
    onnx_model = _to_onnx(wrapper, _example_inputs(model)[name], inputs, outputs, opset)
    simplified = False
    if simplify_graph:
        onnx_model, simplified = simplify(onnx_model, name)
    check_graph_io(onnx_model, name, (*inputs, *outputs))
    if precision == "fp16":
        problems = island_violations(onnx_model, name)
        if problems:
            raise ContractError(f"the fp16 {name} graph computes a float32 island in float16: "
                                f"{'; '.join(problems[:3])}; this is an export bug")
    ensure_tensorrt_ops(onnx_model, name)
    metadata = graph_metadata(model, name, precision, model_hash or model_sha256(model))
    metadata["meltok.simplified"] = str(simplified).lower()
    onnx.helper.set_model_props(onnx_model, metadata)
    onnx_model.producer_name, onnx_model.doc_string = "meltok_export", f"MelTok {name} ({precision})"
    onnx.save(onnx_model, str(path))
    return GraphEntry(file=Path(path).name, sha256=file_sha256(path), precision=precision,
                      inputs=inputs, outputs=outputs)


def export_onnx(model, folder, *, precision: str = "fp32", opset: int = OPSET) -> dict[str, GraphEntry]:
    """Write ``encoder.onnx`` and ``decoder.onnx`` (fp32 or fp16) for ``model`` into ``folder``; returns their
    GraphEntries."""
    if opset < OPSET:
        raise ExportOptionError(f"opset must be at least {OPSET} (LayerNormalization), got {opset}")
    folder = Path(folder)
    digest = model_sha256(model)
    entries = {}
    for name, file in GRAPH_FILES.items():
        log.info("exporting the %s graph (%s, opset %d)", name, precision, opset)
        entries[name] = export_graph(model, name, folder / file, precision=precision, opset=opset, model_hash=digest)
    return entries
