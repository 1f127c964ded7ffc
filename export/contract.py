"""The export contract, declared once: what every exported graph is and how closely it must match the model.

- Graphs: ``GRAPH_NAMES`` (the runtime manifest's names), one ONNX file each (``GRAPH_FILES``), opset
  ``OPSET``, precisions ``PRECISIONS``;
- tensors (``graph_specs``): encoder ``audio`` float32 ``[batch, samples]`` (already padded by the caller)
  -> ``tokens`` int32 ``[batch, rows, columns]``; decoder ``tokens`` -> ``audio`` float32
  ``[batch, out_samples]`` with ``out_samples = (compression * columns - 1) * hop``, or, for a
  ``mel_inversion`` model (``decoder_output``), ``log_mel`` float32 ``[batch, n_mels, frames]`` with
  ``frames = compression * columns`` (the runtime's ``MelInverter`` makes the audio); every named axis is
  dynamic (``dynamic_axes``);
- verification: the shipped clip ``VERIFY_AUDIO`` and the limits per precision (``TOLERANCES``).

``check_graph_io`` holds an ONNX graph to the contract and raises ``ContractError`` naming the mismatch.
"""
from __future__ import annotations

from importlib import resources

import numpy as np

from meltok_runtime.manifest import GRAPH_NAMES, TensorSpec

from .errors import ContractError

OPSET = 17
PRECISIONS = ("fp32", "fp16", "int8")
GRAPH_FILES = {name: f"{name}.onnx" for name in GRAPH_NAMES}
LOSSY = ("fp16", "int8")  # precisions whose verification also measures the mel distance

VERIFY_AUDIO = "assets/verify.flac"
TIE_RTOL = 1e-5  # relative VQ-distance gap under which two codes are a float32 round-off tie
FP16_TOKEN_GOAL = 0.99
FP16_TOKEN_FLOOR = 0.97
# Int8, on the verification clip (tokens vs the PyTorch float32 model; decoder fed the model's tokens):
# random-weight tiny/edge/paper presets and a briefly trained edge model reach 0.9x of the tokens. Random
# weights are the hard case: their token distances are nearly tied and their layers amplify the 8-bit rounding.
INT8_TOKEN_FLOOR = 0.85
INT8_MEL_DISTANCE_MAX = 0.5
TOLERANCES = {
    "fp32": {"token_agreement_min": 1.0, "token_mismatches_beyond_ties_max": 0, "waveform_max_error_max": 1e-3,
             "waveform_snr_db_min": 60.0, "mel_mean_error_max": 1e-3},
    "fp16": {"token_agreement_min": FP16_TOKEN_FLOOR, "token_mismatches_beyond_ties_max": None,
             "waveform_max_error_max": None, "waveform_snr_db_min": 20.0, "mel_mean_error_max": 0.05},
    "int8": {"token_agreement_min": INT8_TOKEN_FLOOR, "token_mismatches_beyond_ties_max": None,
             "waveform_max_error_max": None, "waveform_snr_db_min": None, "mel_mean_error_max": None,
             "mel_distance_max": INT8_MEL_DISTANCE_MAX},
}


def decoder_output(model) -> str:
    """What ``model``'s decoder graph gives (the manifest's ``decoder_output``): ``"log_mel"`` for a model
    whose audio comes from the runtime's ``MelInverter`` (``MelTok.mel_inverter``), else ``"audio"``."""
    return "log_mel" if model.mel_inverter is not None else "audio"


def graph_specs(model) -> dict[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]]:
    """``{graph: (inputs, outputs)}``: names, dtypes and shapes (named axes are dynamic)."""
    rows = model.token_rows
    tokens = TensorSpec("tokens", "int32", ("batch", rows, "columns"))
    decoded = (TensorSpec("log_mel", "float32", ("batch", model.config.frontend.n_mels, "frames"))
               if decoder_output(model) == "log_mel" else TensorSpec("audio", "float32", ("batch", "out_samples")))
    return {"encoder": ((TensorSpec("audio", "float32", ("batch", "samples")),), (tokens,)),
            "decoder": ((tokens,), (decoded,))}


def dynamic_axes(specs) -> dict[str, dict[int, str]]:
    """``{tensor: {axis: name}}`` of the named axes of ``specs`` (for ``torch.onnx.export``)."""
    return {spec.name: {axis: size for axis, size in enumerate(spec.shape) if isinstance(size, str)} for spec in specs}


ONNX_DTYPES = {1: "float32", 10: "float16", 6: "int32", 7: "int64"}  # onnx.TensorProto element types


def check_graph_io(onnx_model, graph: str, specs) -> None:
    """ContractError unless ``onnx_model``'s inputs and outputs are exactly ``specs`` (names, dtypes, shapes)."""
    values = {v.name: v for v in (*onnx_model.graph.input, *onnx_model.graph.output)}
    want = [spec.name for spec in specs]
    have = [v.name for v in (*onnx_model.graph.input, *onnx_model.graph.output)]
    if sorted(have) != sorted(want):
        raise ContractError(f"the {graph} graph has tensors {have}; the contract says {want}: this is an export bug")
    for spec in specs:
        tensor = values[spec.name].type.tensor_type
        dtype = ONNX_DTYPES.get(tensor.elem_type, f"ONNX type {tensor.elem_type}")
        shape = tuple(d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim)
        if dtype != spec.dtype or shape != tuple(spec.shape):
            raise ContractError(f"the {graph} graph's {spec.name!r} is {dtype} {list(shape)}; the contract says "
                                f"{spec.dtype} {list(spec.shape)}: this is an export bug")


def verify_audio(sample_rate: int = 44100) -> np.ndarray:
    """The shipped verification clip (real music and speech, mono float32 ``[N]``) at ``sample_rate``."""
    from meltok_runtime.io.audio import load_mono

    with resources.as_file(resources.files("meltok_export").joinpath(VERIFY_AUDIO)) as path:
        return load_mono(path, sample_rate).samples


__all__ = ["FP16_TOKEN_FLOOR", "FP16_TOKEN_GOAL", "GRAPH_FILES", "GRAPH_NAMES", "INT8_MEL_DISTANCE_MAX",
           "INT8_TOKEN_FLOOR", "LOSSY", "OPSET", "PRECISIONS", "TIE_RTOL", "TOLERANCES", "VERIFY_AUDIO",
           "check_graph_io", "decoder_output", "dynamic_axes", "graph_specs", "verify_audio"]
