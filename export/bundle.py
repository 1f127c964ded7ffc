"""Export bundles: ONNX graphs (+ TensorRT engines), verified, with a manifest, written atomically.

The one place that orchestrates an export: fp32/fp16 graphs traced from torch, int8 graphs quantized
from the fp32 ones, verification on the runtime's backends, TensorRT engines and their verification.
A bundle is written into a temporary folder beside ``out`` and renamed onto ``out`` only when every
step passed; any failure (or an interrupt) leaves neither a bundle nor a temporary folder. ``out`` must
be new, or a previous bundle replaced on request (``force``): a folder holding anything else is refused
before any work, as is the current folder or one that cannot be written.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path

import torch

from meltok.receptive_field import stream_contract
from meltok_runtime.backends.ort import import_onnxruntime
from meltok_runtime.engines.builder import require_builder
from meltok_runtime.engines.bundle import build_engines
from meltok_runtime.engines.commands import write_commands
from meltok_runtime.engines.plan import EngineOptions, default_profile_seconds, engine_limits
from meltok_runtime.engines.reference import write_reference
from meltok_runtime.io.atomic import atomic_directory, atomic_output
from meltok_runtime.manifest import MANIFEST_NAME, Manifest, load_manifest
from meltok_runtime.windowing import DEFAULT_CONTEXT_SECONDS, DEFAULT_WINDOW_SECONDS

from .contract import OPSET, PRECISIONS, VERIFY_AUDIO, decoder_output, verify_audio
from .dependencies import import_onnx
from .errors import ExportDestinationError, ExportOptionError
from .islands import float32_layer_names
from .onnx_export import export_onnx, model_sha256
from .quantize import quantize_graphs
from .verify import require_passed, tolerance_record, verify_engines, verify_graphs

log = logging.getLogger("meltok_export")

ENGINES = ("onnx", "trt")
ONNX_LIMIT_SECONDS = (30.0, 10.0)  # max/opt recorded for ONNX-only bundles (their graphs take any length)
BUNDLE_SUFFIXES = (".onnx", ".plan", ".cache", ".npz", ".json")  # what a previous bundle holds besides its manifest
REFERENCE_SECONDS = 2.0  # the verification clip stored in every bundle (``meltok_runtime.engines.reference``)


def check_destination(out, *, force: bool = False) -> Path:
    """``out`` as a Path if a bundle may be written there; ExportDestinationError otherwise (before any work)."""
    out = Path(out)
    resolved = out.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise ExportDestinationError(f"-o {str(out)!r} is the current folder (or holds it); a bundle replaces its "
                                     "folder as a whole: give a new folder name, e.g. -o bundle")
    if out.exists() and not out.is_dir():
        raise ExportDestinationError(f"{str(out)!r} is a file; give a folder name for the bundle")
    if out.is_dir() and any(out.iterdir()):
        others = sorted(p.name for p in out.iterdir() if p.name != MANIFEST_NAME and p.suffix not in BUNDLE_SUFFIXES)
        if others or not (out / MANIFEST_NAME).is_file():
            raise ExportDestinationError(f"{str(out)!r} already holds files that are not a bundle ({', '.join(others[:3]) or 'no manifest.json'}"
                                         f"{', ...' if len(others) > 3 else ''}); exporting would delete them: "
                                         "give a new folder name")
        if not force:
            raise ExportDestinationError(f"{str(out)!r} holds a bundle already; pass --force to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ExportDestinationError(f"the folder {str(parent)!r} does not exist; create it first or choose another path")
    try:
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as error:
        raise ExportDestinationError(f"cannot write into {str(parent)!r} ({os.strerror(error.errno or 0) or error}); "
                                     "choose a writable folder") from None
    return out


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
        versions["onnxruntime"] = import_onnxruntime().__version__
    if engine == "trt":
        versions["tensorrt"] = require_builder()[0]
    return versions


def bundle_limits(model, *, max_batch: int, max_seconds: float, opt_seconds: float) -> dict:
    """Lengths the bundle was built and profiled for (engines refuse more; ONNX graphs accept any length)."""
    return engine_limits(model.sample_rate, model.hop_length, model.config.tokenizer.compression,
                         max_batch=max_batch, max_seconds=max_seconds, opt_seconds=opt_seconds)


def float32_nodes(folder: Path, graphs: dict) -> dict:
    """Graph -> the layer names a weakly typed fp16 TensorRT build pins to float32 (``manifest.float32_nodes``)."""
    onnx = import_onnx()
    return {name: float32_layer_names(onnx.load(str(folder / graph.file), load_external_data=False), name)
            for name, graph in graphs.items() if graph.precision in ("fp32", "fp16")}


def deployment_data(folder: Path, manifest: Manifest, options: EngineOptions) -> Manifest:
    """Write what deploying needs without the model (``verification.npz``: the verification clip's first
    ``REFERENCE_SECONDS`` and ONNX Runtime CPU's tokens on it; ``tensorrt-commands.json`` for TensorRT-capable
    graphs); ``manifest`` with its ``verification`` record."""
    clip = verify_audio(manifest.sample_rate)[: int(REFERENCE_SECONDS * manifest.sample_rate)]
    manifest = dataclasses.replace(manifest, verification=write_reference(folder, manifest, clip, source=VERIFY_AUDIO))
    if manifest.graphs["encoder"].precision != "int8":
        write_commands(folder, manifest, options)
    return manifest


def annotate_bundle(bundle) -> Manifest:
    """Add the deployment data to a bundle exported before meltok stored it (float32 layer names, verification
    clip, TensorRT command lines), from its own graphs: no model needed. The manifest is replaced atomically."""
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    manifest = dataclasses.replace(manifest, float32_nodes=float32_nodes(bundle, manifest.graphs))
    precision = manifest.graphs["encoder"].precision
    options = EngineOptions(precision=precision if precision != "int8" else "fp32",
                            max_batch=manifest.limits.get("max_batch", 16))
    manifest = deployment_data(bundle, manifest, options)
    with atomic_output(bundle / MANIFEST_NAME) as tmp:
        tmp.write_text(manifest.to_json())
    return manifest


def draft_manifest(model, graphs: dict, *, limits: dict | None = None, opset: int = OPSET, engine: str = "onnx",
                   digest: str | None = None, folder: Path | None = None) -> Manifest:
    """The manifest of a bundle whose ``graphs`` are written (in ``folder``, which names their float32
    layers), before verification adds its figures."""
    config = model.config
    return Manifest(model_id=model.model_id, model_name=config.name, model_sha256=digest or model_sha256(model),
                    sample_rate=model.sample_rate, hop_length=model.hop_length, n_mels=config.frontend.n_mels,
                    token_rows=model.token_rows, codebook_size=model.codebook_size,
                    compression=config.tokenizer.compression, opset=opset, graphs=graphs, limits=limits or {},
                    versions=tool_versions(engine), streaming=stream_contract(config),
                    windowing={"window_seconds": DEFAULT_WINDOW_SECONDS, "context_seconds": DEFAULT_CONTEXT_SECONDS,
                               "fade_seconds": DEFAULT_CONTEXT_SECONDS},
                    float32_nodes=float32_nodes(Path(folder), graphs) if folder is not None else {},
                    decoder_output=decoder_output(model),
                    mel_inversion=dict(model.head.settings) if decoder_output(model) == "log_mel" else {})


def accepted_token_models(model, others) -> list[str]:
    """The model ids of ``others`` (``MelTok``), each with ``model``'s tokenizer; ExportOptionError naming the
    first that differs."""
    accepted = []
    for other in others:
        difference = model.tokenizer_difference(other)
        if difference is not None:
            raise ExportOptionError(f"--tokens-of {other.model_id}: {difference}, so its tokens are not this model's; "
                                    "name only models with the same front end, encoder, quant_conv and codebook")
        if other.model_id != model.model_id and other.model_id not in accepted:
            accepted.append(other.model_id)
    return accepted


def export_bundle(model, out, *, engine: str = "onnx", precision: str = "fp32", max_seconds: float | None = None,
                  opt_seconds: float | None = None, max_batch: int = 16, opset: int = OPSET,
                  verify_seconds: float = 6.0, timing_cache=None, version_compatible: bool = False,
                  stream_profile: bool = False, tokens_of=(), force: bool = False) -> Manifest:
    """Export ``model`` (a ``meltok.MelTok``) to the bundle folder ``out``; returns its manifest.

    ``engine="trt"`` also builds TensorRT engines (fails fast with MissingDependencyError where TensorRT's
    builder is not installed) with the runtime's builder (``meltok_runtime.engines``, the one ``meltok-rt
    engines`` uses), sized by ``max_seconds``/``opt_seconds``/``max_batch`` (defaults: the runtime's window,
    ``default_profile_seconds``; ONNX-only bundles record ``ONNX_LIMIT_SECONDS``), with a stream-sized
    second profile where ``stream_profile``; ``version_compatible`` engines also run on TensorRT's lean
    runtime. Every bundle also holds its verification clip with ONNX Runtime CPU's tokens
    (``verification.npz``) and the equivalent ``trtexec``/``polygraphy`` lines (``tensorrt-commands.json``).
    ``precision="int8"``: ONNX Runtime CPU graphs, quantized
    from the float32 ones (``meltok_export.quantize``). ``tokens_of``: other models (``MelTok``) whose token
    files the bundle decodes, each checked to have the same tokenizer (``MelTok.tokenizer_difference``;
    ExportOptionError otherwise) and recorded in ``accepts_tokens_of``. ``force`` replaces a previous bundle at ``out``.
    Raises VerificationError (a BundleError) when the graphs or engines do not reproduce the model;
    nothing is left behind then.
    """
    numbers = (model.sample_rate, model.hop_length, model.config.tokenizer.compression)
    default_max, default_opt = default_profile_seconds(*numbers) if engine == "trt" else ONNX_LIMIT_SECONDS
    max_seconds = default_max if max_seconds is None else max_seconds
    opt_seconds = min(default_opt, max_seconds) if opt_seconds is None else opt_seconds
    _check_options(engine, precision, max_seconds, opt_seconds, max_batch)
    if precision == "int8" and decoder_output(model) == "log_mel":
        raise ExportOptionError(f"{model.config.name} decodes through the log-mel (mel_inversion), which int8 is not "
                                "verified for (its log-mel error, amplified by the inversion, fails the int8 limit): "
                                "use --precision fp32 or fp16")
    if (version_compatible or stream_profile) and engine != "trt":
        raise ExportOptionError("--version-compatible and --stream-profile apply to TensorRT engines: add --engine trt")
    accepted = accepted_token_models(model, tokens_of)
    out = check_destination(out, force=force)
    if engine == "trt":
        require_builder()
    if model.training or any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).cpu().float().eval()  # export and verify a float32 CPU copy
    digest = model_sha256(model)
    limits = bundle_limits(model, max_batch=max_batch, max_seconds=max_seconds, opt_seconds=opt_seconds)
    with atomic_directory(out) as folder:
        graphs = export_onnx(model, folder, precision="fp32" if precision == "int8" else precision, opset=opset)
        quantization = None
        if precision == "int8":  # the float32 graphs (TensorRT-checked), quantized in place
            graphs, quantization = quantize_graphs(folder, model)
        manifest = draft_manifest(model, graphs, limits=limits, opset=opset, engine=engine, digest=digest,
                                  folder=folder)
        log.info("verifying the graphs on the runtime's backends against the PyTorch model")
        report = verify_graphs(model, folder, manifest, max_seconds=verify_seconds)
        require_passed(report, "the exported graphs")
        # the engines' options: this export's (--engine trt), or what `meltok-rt engines` does by default
        trt = engine == "trt"
        options = EngineOptions(precision=precision if precision != "int8" else "fp32",
                                max_seconds=max_seconds if trt else None, opt_seconds=opt_seconds if trt else None,
                                max_batch=max_batch, stream_profile=stream_profile,
                                version_compatible=version_compatible,
                                timing_cache=str(timing_cache) if timing_cache else None)
        manifest = deployment_data(folder, manifest, options)
        if engine == "trt":
            manifest = dataclasses.replace(manifest, engines=build_engines(folder, manifest, options, limits=limits))
            log.info("verifying the TensorRT engines against the PyTorch model")
            report["tensorrt"] = verify_engines(model, folder, manifest, max_seconds=verify_seconds)
            require_passed(report, "the TensorRT engines")
        tolerances = tolerance_record(report)
        if quantization is not None:
            tolerances["tensorrt_ops"] = quantization.pop("tensorrt_ops")
            tolerances["int8"] = quantization
        manifest = dataclasses.replace(manifest, tolerances=tolerances, accepts_tokens_of=accepted)
        manifest.write(folder)
    log.info("wrote bundle %s", out)
    return manifest
