"""TensorRT's builder (10 and 11, Python API) run on an ``EnginePlan``: the one place that builds engines.

Both ``meltok-export --engine trt`` and ``meltok-rt engines`` call ``build_engine``. It needs the full
``tensorrt`` package (the system one of JetPack, or PyPI's with the builder libraries from NVIDIA's
index: ``TRT_BUILD_INSTALL``) and a GPU; ``require_builder`` says so in one line before any work.
A timing cache is reused across builds (``timing_cache`` or a per-user cache, never shipped in a
bundle, whose every file the manifest hashes).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from meltok_runtime.backends.cuda import import_cudart
from meltok_runtime.backends.trt import TRT_BUILD_INSTALL, gpu_here
from meltok_runtime.errors import BundleError, MissingDependencyError
from meltok_runtime.io.atomic import atomic_output
from meltok_runtime.manifest import EngineEntry, file_sha256
from meltok_runtime.optional import import_optional

from .plan import EnginePlan

log = logging.getLogger("meltok_runtime")

TIMING_CACHE_NAME = "tensorrt-timing.cache"
BUILDER_HINT = (f"TensorRT engines cannot be built here: the builder is the full `tensorrt` package (on Jetson it "
                f"comes with JetPack; elsewhere: {TRT_BUILD_INSTALL}); the lean runtime only runs engines")


def import_builder():
    """The full ``tensorrt`` package; MissingDependencyError in one line (``BUILDER_HINT``) where it is missing,
    saying so when only the lean runtime ``tensorrt_lean`` (which cannot build) is installed."""
    try:
        return import_optional("tensorrt", install=TRT_BUILD_INSTALL, purpose="building TensorRT engines")
    except MissingDependencyError:
        try:
            import_optional("tensorrt_lean", install=TRT_BUILD_INSTALL, purpose="")
            lean = " (only TensorRT's lean runtime, tensorrt_lean, is installed)"
        except MissingDependencyError:
            lean = ""
        raise MissingDependencyError(BUILDER_HINT.replace("cannot be built here", f"cannot be built here{lean}")) \
            from None


def require_builder() -> tuple[str, str, str]:
    """``(TensorRT version, compute capability, GPU name)``; MissingDependencyError/BackendError in one line
    unless TensorRT's builder and a GPU are usable here."""
    version = import_builder().__version__
    capability, name = gpu_here(import_cudart(), 0)
    return version, capability, name


def default_timing_cache() -> Path:
    """``$XDG_CACHE_HOME/meltok/tensorrt-timing.cache`` (``~/.cache/meltok/...`` without XDG_CACHE_HOME)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "meltok" / TIMING_CACHE_NAME


def build_engine(plan: EnginePlan, onnx_path, plan_path, onnx_sha256: str, *, timing_cache=None,
                 workspace_gib: float | None = None) -> EngineEntry:
    """Build ``plan`` from ``onnx_path`` into the engine file ``plan_path`` (atomically); its EngineEntry.

    ``timing_cache``: a file read if present and written back after the build (default:
    ``default_timing_cache()``).
    """
    trt = import_builder()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    version = trt.__version__
    capability, device_name = gpu_here(import_cudart(), 0)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if plan.strongly_typed and int(version.split(".")[0]) < 11:  # TensorRT 11: always strongly typed (flag deprecated)
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BundleError(f"TensorRT {version} cannot parse {onnx_path.name}: {'; '.join(errors) or 'unknown error'}")

    config = builder.create_builder_config()
    if workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.clear_flag(trt.BuilderFlag.TF32)
    if plan.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if plan.weak_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pin_float32_layers(trt, network, set(plan.float32_layers))
    for shapes in plan.profiles:
        profile = builder.create_optimization_profile()
        for name, shape in shapes.items():
            profile.set_shape(name, shape["min"], shape["opt"], shape["max"])
        config.add_optimization_profile(profile)

    cache_path = Path(timing_cache) if timing_cache else default_timing_cache()
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("TensorRT refused the timing cache %s (another TensorRT version or GPU?); building without it",
                    cache_path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    log.info("building the %s TensorRT engine (%s, TensorRT %s, %s)", plan.graph, plan.precision, version,
             device_name)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BundleError(f"TensorRT {version} could not build an engine from {onnx_path.name} (see the TensorRT "
                          "messages above); try a smaller --max-seconds or --max-batch")
    with atomic_output(plan_path) as tmp:  # a killed build never leaves a partial engine or timing cache
        tmp.write_bytes(memoryview(serialized))
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(cache_path) as tmp:
        tmp.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return EngineEntry(graph=plan.graph, file=plan_path.name, sha256=file_sha256(plan_path), onnx_sha256=onnx_sha256,
                       tensorrt_version=version, compute_capability=capability, device_name=device_name,
                       precision=plan.precision, profile=plan.profiles[0], version_compatible=plan.version_compatible,
                       stream_profile=plan.profiles[1] if len(plan.profiles) > 1 else {})


def pin_float32_layers(trt, network, names: set[str]) -> list[str]:
    """Weakly typed fp16 builds: keep the layers named exactly as one of ``names`` (the plan's float32
    layers: the island nodes and the normalisations) in float32; a trunk layer ``<island node>_1`` is
    another node and is left to fp16. Returns the pinned layer names."""
    pinned = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.name in names:
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                if layer.get_output_type(output) in (trt.float32, trt.float16):
                    layer.set_output_type(output, trt.float32)
            pinned.append(layer.name)
    return pinned
