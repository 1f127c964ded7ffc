"""TensorRT engines from the bundle's ONNX graphs (TensorRT 10 and 11 builder, Python API).

- One optimisation profile per graph. By default it fits how the runtime calls an engine: max = one
  runtime window (``meltok_runtime.windowing.DEFAULT_WINDOW_SECONDS``, context included, plus the column
  the runtime keeps spare) at the bundle's max batch, opt = one window at batch 1. TensorRT sizes every
  execution context for the profile's maximum, so a longer max costs GPU memory in every process.
- A timing cache reused across exports: ``timing_cache`` or a per-user cache (``default_timing_cache``);
  it is never shipped in the bundle, whose every file the manifest hashes.
- Precision: an ONNX whose trunk is float16 (``precision="fp16"`` export, with explicit ``Cast`` nodes) is
  built as a strongly typed network, the only kind TensorRT 11 builds. A float32 ONNX builds a float32
  engine; asked for fp16 on TensorRT 10, a float32 ONNX is built weakly typed with ``BuilderFlag.FP16`` +
  ``OBEY_PRECISION_CONSTRAINTS`` and the float32 islands (``meltok_export.islands``) pinned to float32;
  TensorRT 11 refuses that (export the fp16 graphs).
- TF32 is off in every build: float32 layers compute in float32, as the ONNX graph says (with TF32 the
  islands' products read 10-bit mantissas and fp16 engines fall under their token floor).
- ``version_compatible``: engines that also run on later TensorRT releases of the same major and on the
  lean runtime (``tensorrt_lean``); recorded in each ``EngineEntry``.

The builder needs the full ``tensorrt`` package (``TRT_BUILD_INSTALL``) and a GPU; ``require_tensorrt``
says so in one line before any work.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from meltok_runtime.io.atomic import atomic_output
from meltok_runtime.backends.cuda import import_cudart
from meltok_runtime.backends.trt import TRT_BUILD_INSTALL, gpu_here
from meltok_runtime.errors import BackendError, BundleError
from meltok_runtime.lengths import decoded_length, token_columns
from meltok_runtime.manifest import EngineEntry, file_sha256
from meltok_runtime.optional import import_optional
from meltok_runtime.windowing import DEFAULT_WINDOW_SECONDS, seconds_to_columns

from .contract import GRAPH_FILES
from .dependencies import import_onnx
from .errors import ExportOptionError
from .islands import island_node_names

log = logging.getLogger("meltok_export")

TIMING_CACHE_NAME = "tensorrt-timing.cache"


def import_builder():
    """The full ``tensorrt`` package (the lean runtime cannot build)."""
    return import_optional("tensorrt", install=TRT_BUILD_INSTALL, purpose="building TensorRT engines (--engine trt)")


def require_tensorrt() -> None:
    """MissingDependencyError/BackendError in one line unless TensorRT's builder and a GPU are usable here."""
    import_builder()
    gpu_here(import_cudart(), 0)


def tensorrt_version() -> str:
    return import_builder().__version__


def default_timing_cache() -> Path:
    """``$XDG_CACHE_HOME/meltok/tensorrt-timing.cache`` (``~/.cache/meltok/...`` without XDG_CACHE_HOME)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "meltok" / TIMING_CACHE_NAME


def default_profile_seconds(model) -> tuple[float, float]:
    """``(max_seconds, opt_seconds)``: one runtime window plus the spare column, and one window."""
    hop, compression, rate = model.hop_length, model.config.tokenizer.compression, model.sample_rate
    window = max(1, seconds_to_columns(DEFAULT_WINDOW_SECONDS, rate, hop, compression))
    return decoded_length(window + 1, hop, compression) / rate, decoded_length(window, hop, compression) / rate


def profile_shapes(limits: dict, token_rows: int, hop: int, compression: int,
                   opt_batch: int = 1) -> dict[str, dict[str, dict[str, list[int]]]]:
    """Optimisation profiles from the bundle's ``limits``: graph -> input -> {"min", "opt", "max"} shapes."""
    if not 1 <= opt_batch <= limits["max_batch"]:
        raise ExportOptionError(f"need 1 <= opt batch <= max batch, got {opt_batch} and {limits['max_batch']}")
    samples = {"min": limits["min_samples"], "opt": limits["opt_samples"], "max": limits["max_samples"]}
    batch = {"min": 1, "opt": opt_batch, "max": limits["max_batch"]}
    return {
        "encoder": {"audio": {k: [batch[k], samples[k]] for k in samples}},
        "decoder": {"tokens": {k: [batch[k], token_rows, token_columns(samples[k], hop, compression)]
                               for k in samples}},
    }


def _onnx_has_float16(onnx_model) -> bool:
    onnx = import_onnx()
    if any(init.data_type == onnx.TensorProto.FLOAT16 for init in onnx_model.graph.initializer):
        return True
    return any(node.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16
                                               for a in node.attribute) for node in onnx_model.graph.node)


def build_engine(onnx_path, plan_path, profile: dict, *, precision: str, graph: str, timing_cache=None,
                 workspace_gib: float | None = None, version_compatible: bool = False) -> EngineEntry:
    """Build a serialized TensorRT engine from ``onnx_path`` into ``plan_path``; returns its EngineEntry.

    ``profile``: input name -> {"min": shape, "opt": shape, "max": shape}. ``timing_cache``: a file read if
    present and written back after the build (default: ``default_timing_cache()``).
    """
    trt = import_builder()
    onnx = import_onnx()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    version = trt.__version__
    capability, device_name = gpu_here(import_cudart(), 0)
    onnx_model = onnx.load(str(onnx_path), load_external_data=False)
    has_half = _onnx_has_float16(onnx_model)
    major = int(version.split(".")[0])
    if precision not in ("fp32", "fp16") or (precision == "fp32" and has_half):
        raise ExportOptionError(f"precision {precision!r} does not fit {onnx_path.name} "
                                f"({'float16' if has_half else 'float32'} graph)")
    if precision == "fp16" and not has_half and major >= 11:
        raise BackendError(f"TensorRT {version} builds only strongly typed networks and {onnx_path.name} is a "
                           "float32 graph; export with --precision fp16 to get float16 graphs with explicit casts")
    weak_fp16 = precision == "fp16" and not has_half  # TensorRT 10 only

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if has_half and major < 11:  # TensorRT 11 networks are always strongly typed (the flag is deprecated there)
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
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if weak_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        _pin_float32_islands(trt, network, island_node_names(onnx_model, graph))
    optimisation = builder.create_optimization_profile()
    for name, shapes in profile.items():
        optimisation.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(optimisation)

    cache_path = Path(timing_cache) if timing_cache else default_timing_cache()
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("TensorRT refused the timing cache %s (another TensorRT version or GPU?); building without it",
                    cache_path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    log.info("building the %s TensorRT engine (%s, TensorRT %s, %s)", graph, precision, version, device_name)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BundleError(f"TensorRT {version} could not build an engine from {onnx_path.name} (see the TensorRT "
                          "messages above); try a smaller --max-seconds or --max-batch")
    with atomic_output(plan_path) as tmp:  # a killed build never leaves a partial engine or timing cache
        tmp.write_bytes(memoryview(serialized))
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(cache_path) as tmp:
        tmp.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return EngineEntry(graph=graph, file=plan_path.name, sha256=file_sha256(plan_path),
                       onnx_sha256=file_sha256(onnx_path), tensorrt_version=version,
                       compute_capability=capability, device_name=device_name, precision=precision,
                       profile=profile, version_compatible=version_compatible)


def _pin_float32_islands(trt, network, island_nodes: set[str]) -> None:
    """Weakly typed FP16 builds: keep the layers of the float32 islands and every normalisation layer in
    float32 (the ONNX parser names a layer after its node, with ``_<n>`` when a node makes several)."""
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        in_island = layer.name in island_nodes or layer.name.rsplit("_", 1)[0] in island_nodes  # "<node>_<n>"
        if layer.type == trt.LayerType.NORMALIZATION or in_island:
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                if layer.get_output_type(output) in (trt.float32, trt.float16):
                    layer.set_output_type(output, trt.float32)


def build_engines(model, folder: Path, precision: str, limits: dict, *, timing_cache=None,
                  version_compatible: bool = False) -> tuple[EngineEntry, ...]:
    """Both graphs' engines, profiled from ``limits``, into ``folder``."""
    profiles = profile_shapes(limits, model.token_rows, model.hop_length, model.config.tokenizer.compression)
    return tuple(build_engine(folder / file, folder / f"{name}.plan", profiles[name], precision=precision,
                              graph=name, timing_cache=timing_cache, version_compatible=version_compatible)
                 for name, file in GRAPH_FILES.items())
