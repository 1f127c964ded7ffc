"""Export bundles: ONNX graphs (+ TensorRT engines), verified, with a manifest, written atomically.

A bundle is written into a temporary folder beside ``out`` and renamed onto ``out`` only when every
step passed: export, TensorRT operator check, verification against the PyTorch model, engine build
and engine verification. Any failure (or an interrupt) leaves neither a bundle nor a temporary folder.
"""
from __future__ import annotations

import copy
import logging
import platform
from importlib import metadata
from pathlib import Path

import torch

from meltok.receptive_field import stream_contract
from meltok_runtime.atomic import atomic_directory
from meltok_runtime.errors import MeltokError
from meltok_runtime.framing import padded_length, token_columns
from meltok_runtime.manifest import Manifest

from .onnx_export import GRAPH_FILES, OPSET, PRECISIONS, export_onnx, model_sha256
from .verify import require_passed, tolerance_record, verify_engines, verify_graphs

log = logging.getLogger("meltok_export")

ENGINES = ("onnx", "trt")


class ExportOptionError(MeltokError, ValueError):
    """Export options out of range (engine, precision, limits)."""


def _check_options(engine: str, precision: str, max_seconds: float, opt_seconds: float, max_batch: int) -> None:
    if engine not in ENGINES:
        raise ExportOptionError(f"engine must be one of {ENGINES}, got {engine!r}")
    if precision not in PRECISIONS:
        raise ExportOptionError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "int8" and engine != "onnx":
        raise ExportOptionError("int8 bundles are for ONNX Runtime on the CPU (their uint8 QDQ graphs do not fit "
                                "TensorRT's ONNX parser): use --engine onnx, or --precision fp16 for TensorRT")
    if not max_seconds > 0:
        raise ExportOptionError(f"max seconds must be positive, got {max_seconds}")
    if not 0 < opt_seconds <= max_seconds:
        raise ExportOptionError(f"opt seconds must lie in (0, max seconds = {max_seconds}], got {opt_seconds}")
    if int(max_batch) != max_batch or max_batch < 1:
        raise ExportOptionError(f"max batch must be a positive integer, got {max_batch}")


def tool_versions(engine: str = "onnx") -> dict[str, str]:
    """Versions of the tools that made a bundle."""
    versions = {"python": platform.python_version()}
    for package in ("meltok", "torch", "onnx", "onnxruntime", "onnxsim", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    if "onnxruntime" not in versions:  # the GPU wheel installs the same module under another name
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    if engine == "trt":
        from .tensorrt_build import tensorrt_version

        versions["tensorrt"] = tensorrt_version()
    return versions


def bundle_limits(model, *, max_batch: int, max_seconds: float, opt_seconds: float) -> dict:
    """Lengths the bundle was built and profiled for (engines refuse more; ONNX graphs accept any length)."""
    hop, compression, rate = model.hop_length, model.config.tokenizer.compression, model.sample_rate
    max_samples = padded_length(int(max_seconds * rate), hop, compression)
    return {"max_batch": int(max_batch), "max_seconds": float(max_seconds), "opt_seconds": float(opt_seconds),
            "min_samples": padded_length(1, hop, compression), "max_samples": max_samples,
            "max_columns": token_columns(max_samples, hop, compression)}


def export_bundle(model, out, *, engine: str = "onnx", precision: str = "fp32", max_seconds: float = 30.0,
                  opt_seconds: float = 10.0, max_batch: int = 16, opset: int = OPSET,
                  verify_seconds: float = 6.0, timing_cache=None) -> Manifest:
    """Export ``model`` (a ``meltok.MelTok``) to the bundle folder ``out``; returns its manifest.

    ``engine="trt"`` also builds TensorRT engines (fails fast with BackendError where TensorRT is not
    installed). ``precision="int8"``: ONNX Runtime CPU graphs, quantized from the float32 ones
    (``meltok_export.quantize``); the manifest's ``tolerances["int8"]`` says how, and
    ``tolerances["tensorrt_ops"]`` why the TensorRT operator check does not apply to them. Raises
    VerificationError (a BundleError) when the graphs or engines do not reproduce the model; nothing is
    left behind then.
    """
    _check_options(engine, precision, max_seconds, opt_seconds, max_batch)
    if engine == "trt":
        from .tensorrt_build import require_tensorrt

        require_tensorrt()
    if model.training or any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).cpu().float().eval()  # export and verify a float32 CPU copy
    digest = model_sha256(model)
    limits = bundle_limits(model, max_batch=max_batch, max_seconds=max_seconds, opt_seconds=opt_seconds)
    out = Path(out)
    with atomic_directory(out) as folder:
        quantization = None
        if precision == "int8":  # the float32 graphs (TensorRT-checked), quantized in place
            from .quantize import quantize_graphs

            export_onnx(model, folder, precision="fp32", opset=opset)
            graphs, quantization = quantize_graphs(folder, model)
        else:
            graphs = export_onnx(model, folder, precision=precision, opset=opset)
        log.info("verifying the graphs with ONNX Runtime against the PyTorch model")
        report = verify_graphs(model, folder, precision, max_seconds=verify_seconds)
        require_passed(report, "the exported graphs")
        engines = ()
        if engine == "trt":
            engines = _build_engines(model, folder, precision, limits, timing_cache)
            log.info("verifying the TensorRT engines against the PyTorch model")
            report["tensorrt"] = verify_engines(model, folder, engines, precision, max_seconds=verify_seconds)
            require_passed(report, "the TensorRT engines")
        config = model.config
        tolerances = tolerance_record(report)
        if quantization is not None:
            tolerances["tensorrt_ops"] = quantization.pop("tensorrt_ops")
            tolerances["int8"] = quantization
        manifest = Manifest(
            model_id=model.model_id, model_name=config.name, model_sha256=digest,
            sample_rate=model.sample_rate, hop_length=model.hop_length, n_mels=config.frontend.n_mels,
            token_rows=model.token_rows, codebook_size=model.codebook_size,
            compression=config.tokenizer.compression, opset=opset, graphs=graphs, engines=engines,
            limits=limits, tolerances=tolerances, versions=tool_versions(engine), streaming=stream_contract(config))
        manifest.write(folder)
    log.info("wrote bundle %s", out)
    return manifest


def _build_engines(model, folder: Path, precision: str, limits: dict, timing_cache) -> tuple:
    from .tensorrt_build import build_engine, profile_shapes

    profiles = profile_shapes(model, max_batch=limits["max_batch"], max_seconds=limits["max_seconds"],
                              opt_seconds=limits["opt_seconds"])
    return tuple(build_engine(folder / file, folder / f"{name}.plan", profiles[name], precision=precision,
                              graph=name, timing_cache=timing_cache)
                 for name, file in GRAPH_FILES.items())
