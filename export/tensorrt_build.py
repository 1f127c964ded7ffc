"""TensorRT engines from the bundle's ONNX graphs (TensorRT 10 and 11 Python API), and a small runner.

- One optimisation profile per graph (min/opt/max batch and length).
- A timing cache file reused across builds (``timing.cache`` in the bundle unless another path is given).
- Precision: an ONNX whose trunk is float16 (``precision="fp16"`` export, with explicit ``Cast`` nodes) is
  built as a strongly typed network, the only kind TensorRT 11 builds. A float32 ONNX builds a float32
  engine; asked for fp16 on TensorRT 10, a float32 ONNX is
  built weakly typed with ``BuilderFlag.FP16`` + ``OBEY_PRECISION_CONSTRAINTS`` and the float32 islands
  (log-mel, VQ, head and ISTFT) pinned to float32; TensorRT 11 refuses that (export the fp16 graphs).
- TF32 is off in every build: float32 layers compute in float32, as the ONNX graph says.
- Engines are valid only for the GPU compute capability and TensorRT version that built them; both are
  recorded in the ``EngineEntry`` with the ONNX file's hash.

``tensorrt`` is imported lazily: every function here raises BackendError when it is missing.
"""
from __future__ import annotations

import logging
from pathlib import Path

from meltok_runtime.atomic import atomic_output
from meltok_runtime.errors import BackendError, BundleError
from meltok_runtime.manifest import EngineEntry, file_sha256

log = logging.getLogger("meltok_export")

INSTALL_HINT = ("TensorRT is not installed: pip install 'meltok[trt]' (needs an NVIDIA GPU with a CUDA driver), "
                "or export with --engine onnx")
TIMING_CACHE = "timing.cache"
# Name fragments (torch module paths in the ONNX node names) of the float32 islands, for weakly typed builds;
# normalisation layers are pinned to float32 too, as in the fp16 graphs.
FLOAT32_ISLANDS = ("/frontend/", "/quantizer/", "/head/", "ArgMin", "Exp", "Cos", "Sin", "Log")


def _import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise BackendError(INSTALL_HINT) from None
    return tensorrt


def tensorrt_available() -> str | None:
    """None when TensorRT and a CUDA GPU are usable here, else the reason (one line)."""
    try:
        _import_tensorrt()
    except BackendError as error:
        return str(error)
    try:
        device_info()
    except BackendError as error:
        return str(error)
    return None


def require_tensorrt() -> None:
    """Raise BackendError (with the install hint) unless TensorRT and a GPU are usable: call before any work."""
    reason = tensorrt_available()
    if reason:
        raise BackendError(reason)


def tensorrt_version() -> str:
    return _import_tensorrt().__version__


def _major(version: str) -> int:
    return int(version.split(".")[0])


def device_info(device: int = 0) -> dict:
    """``{"compute_capability": "9.0", "name": "NVIDIA H100 ..."}`` of CUDA device ``device``."""
    try:  # cuda-bindings (cuda-python >= 12.6) first, then the older cuda-python layout
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        error, props = cudart.cudaGetDeviceProperties(device)
        if int(error) == 0:
            name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) \
                else str(props.name)
            return {"compute_capability": f"{props.major}.{props.minor}", "name": name}
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            return {"compute_capability": f"{major}.{minor}", "name": torch.cuda.get_device_name(device)}
    except ImportError:
        pass
    raise BackendError("no NVIDIA GPU is visible (CUDA reports no device); TensorRT engines need one: "
                       "export with --engine onnx, or run on a machine with an NVIDIA GPU and driver")


def profile_shapes(model, *, max_batch: int, max_seconds: float, opt_seconds: float,
                   opt_batch: int = 1) -> dict[str, dict[str, dict[str, list[int]]]]:
    """Optimisation profiles: graph -> input -> {"min", "opt", "max"} shapes (lengths follow the framing rules)."""
    from meltok_runtime.framing import padded_length, token_columns

    hop, compression, rate = model.hop_length, model.config.tokenizer.compression, model.sample_rate
    if not 1 <= opt_batch <= max_batch:
        raise ValueError(f"need 1 <= opt batch <= max batch, got {opt_batch} and {max_batch}")
    if not 0 < opt_seconds <= max_seconds:
        raise ValueError(f"need 0 < opt seconds <= max seconds, got {opt_seconds} and {max_seconds}")
    samples = {"min": padded_length(1, hop, compression), "opt": padded_length(int(opt_seconds * rate), hop, compression),
               "max": padded_length(int(max_seconds * rate), hop, compression)}
    batch = {"min": 1, "opt": opt_batch, "max": max_batch}
    rows = model.token_rows
    return {
        "encoder": {"audio": {k: [batch[k], samples[k]] for k in samples}},
        "decoder": {"tokens": {k: [batch[k], rows, token_columns(samples[k], hop, compression)] for k in samples}},
    }


def _onnx_has_float16(onnx_path) -> bool:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    if any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer):
        return True
    return any(node.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16
                                               for a in node.attribute) for node in model.graph.node)


def build_engine(onnx_path, plan_path, profile: dict, *, precision: str, graph: str,
                 timing_cache=None, workspace_gib: float | None = None) -> EngineEntry:
    """Build a serialized TensorRT engine from ``onnx_path`` into ``plan_path``; returns its EngineEntry.

    ``profile``: input name -> {"min": shape, "opt": shape, "max": shape}. ``timing_cache``: a file read
    if present and written back after the build (default: ``timing.cache`` beside the plan).
    """
    trt = _import_tensorrt()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    version = trt.__version__
    info = device_info()
    has_half = _onnx_has_float16(onnx_path)
    if precision not in ("fp32", "fp16") or (precision == "fp32" and has_half):
        raise ValueError(f"precision {precision!r} does not fit {onnx_path.name} "
                         f"({'float16' if has_half else 'float32'} graph)")
    if precision == "fp16" and not has_half and _major(version) >= 11:
        raise BackendError(f"TensorRT {version} builds only strongly typed networks and {onnx_path.name} is a "
                           "float32 graph; export with --precision fp16 to get float16 graphs with explicit casts")
    typed = has_half or _major(version) >= 11
    weak_fp16 = precision == "fp16" and not has_half  # TensorRT 10 only

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # ignored (always on) in TensorRT 11
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BundleError(f"TensorRT {version} cannot parse {onnx_path.name}: {'; '.join(errors) or 'unknown error'}")

    config = builder.create_builder_config()
    if workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    # TensorRT enables TF32 by default: the float32 islands (STFT, mel and VQ products, ISTFT) would then
    # read 10-bit-mantissa operands on Ampere and later, which costs the fp16 engines their token floor.
    config.clear_flag(trt.BuilderFlag.TF32)
    if weak_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        _pin_float32_islands(trt, network)
    optimisation = builder.create_optimization_profile()
    for name, shapes in profile.items():
        optimisation.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(optimisation)

    cache_path = Path(timing_cache) if timing_cache else plan_path.parent / TIMING_CACHE
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    log.info("building the %s TensorRT engine (%s, TensorRT %s, %s)", graph, precision, version, info["name"])
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BundleError(f"TensorRT {version} could not build an engine from {onnx_path.name} (see the TensorRT "
                          "messages above); try a smaller --max-seconds or --max-batch")
    with atomic_output(plan_path) as tmp:  # a killed build never leaves a partial engine or timing cache
        tmp.write_bytes(memoryview(serialized))
    with atomic_output(cache_path) as tmp:
        tmp.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return EngineEntry(graph=graph, file=plan_path.name, sha256=file_sha256(plan_path),
                       onnx_sha256=file_sha256(onnx_path), tensorrt_version=version,
                       compute_capability=info["compute_capability"], device_name=info["name"],
                       precision=precision, profile=profile)


def _pin_float32_islands(trt, network) -> None:
    """Weakly typed FP16 builds: keep the float32 islands' layers (by ONNX node name) in float32."""
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type == trt.LayerType.NORMALIZATION or any(fragment in layer.name for fragment in FLOAT32_ISLANDS):
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                if layer.get_output_type(output) in (trt.float32, trt.float16):
                    layer.set_output_type(output, trt.float32)


def engine_mismatch(engine: EngineEntry) -> str | None:
    """Why ``engine`` cannot run here (other GPU or TensorRT version), or None when it can."""
    version = tensorrt_version()
    if version != engine.tensorrt_version:
        return (f"the {engine.graph} engine was built with TensorRT {engine.tensorrt_version}, this is "
                f"{version}; rebuild it with meltok-export --engine trt")
    capability = device_info()["compute_capability"]
    if capability != engine.compute_capability:
        return (f"the {engine.graph} engine was built for compute capability {engine.compute_capability} "
                f"({engine.device_name}), this GPU has {capability}; rebuild it on this GPU")
    return None


class EngineRunner:
    """Runs one serialized engine with torch CUDA tensors as buffers (for verification, not the runtime).

    ``run(feeds: name -> numpy) -> name -> numpy``; use as a context manager.
    """

    def __init__(self, plan_path):
        self.plan_path = Path(plan_path)
        self.engine = self.context = None

    def __enter__(self):
        import torch

        trt = _import_tensorrt()
        self._torch = torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self.engine is None:
            raise BundleError(f"TensorRT cannot load {self.plan_path}; it is corrupt or from another TensorRT")
        self.context = self.engine.create_execution_context()
        self._trt = trt
        return self

    def __exit__(self, *exc):
        self.context = self.engine = None

    def run(self, feeds: dict) -> dict:
        import numpy as np

        torch, trt = self._torch, self._trt
        stream = torch.cuda.current_stream()  # the copies below run on it too
        keep, outputs = [], {}
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                array = np.ascontiguousarray(feeds[name])
                tensor = torch.from_numpy(array).cuda()
                self.context.set_input_shape(name, tuple(array.shape))
                self.context.set_tensor_address(name, tensor.data_ptr())
                keep.append(tensor)
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                shape = tuple(self.context.get_tensor_shape(name))
                dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
                tensor = torch.empty(shape, dtype=dtype, device="cuda")
                self.context.set_tensor_address(name, tensor.data_ptr())
                outputs[name] = tensor
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise BundleError(f"TensorRT failed to run {self.plan_path.name}")
        stream.synchronize()
        return {name: tensor.cpu().numpy() for name, tensor in outputs.items()}
