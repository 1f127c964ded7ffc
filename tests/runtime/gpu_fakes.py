"""A GPU emulated with numpy, so that the GPU backends' code runs on any CPU (the default test suite).

- ``FakeCudart``: the cuda-python runtime API the backends call, with real memory semantics: device
  buffers are numpy byte arrays at fake addresses, copies read and write real host memory (by address,
  as CUDA does), every copy checks its direction, its bounds and its size, asynchronous work is queued on
  its stream in order and done only at ``cudaStreamSynchronize``, and the default stream is refused.
- ``fake_tensorrt(cudart)``: a ``tensorrt`` module whose engines are the ONNX graphs themselves: the
  execution context checks its optimisation profile, takes tensor addresses, and ``execute_async_v3``
  enqueues a run of the real graph (ONNX Runtime CPU) on the bytes at the bound device addresses, read
  with the engine's dtypes.
- ``FakeOrtModule``: ``onnxruntime`` with a CUDA provider whose IO binding refuses to run before
  ``synchronize_inputs`` and whose outputs live "on the device" until copied.

Wrong copy sizes, orders or dtypes in a backend give wrong bytes or a ``FakeCudaError``: the tests
compare the results byte for byte with ONNX Runtime CPU.
"""
from __future__ import annotations

import ctypes
import enum
import itertools
import json
from types import ModuleType, SimpleNamespace

import numpy as np
import onnxruntime


class FakeCudaError(AssertionError):
    """A misuse of the CUDA API that real CUDA would punish (often silently)."""


CudaError = enum.Enum("cudaError_t", {"cudaSuccess": 0, "cudaErrorInvalidValue": 1,
                                      "cudaErrorMemoryAllocation": 2, "cudaErrorInsufficientDriver": 35,
                                      "cudaErrorNoDevice": 100})
MemcpyKind = enum.Enum("cudaMemcpyKind", {"cudaMemcpyHostToHost": 0, "cudaMemcpyHostToDevice": 1,
                                          "cudaMemcpyDeviceToHost": 2, "cudaMemcpyDeviceToDevice": 3})
DEVICE_BASE = 0x7F00_0000_0000  # fake device addresses: far from this process's heap


class FakeCudart:
    """``cuda.bindings.runtime`` on numpy. ``devices``: ``[(name, major, minor)]``; ``status`` names the error
    every call returns (e.g. ``"cudaErrorInsufficientDriver"`` for an old driver)."""

    cudaError_t = CudaError
    cudaMemcpyKind = MemcpyKind
    cudaStreamNonBlocking = 1

    def __init__(self, devices=(("NVIDIA H100 80GB HBM3", 9, 0),), status: str = "cudaSuccess"):
        self.devices, self.status = list(devices), CudaError[status]
        self.memory: dict[int, np.ndarray] = {}
        self.streams: dict[int, list] = {}
        self.calls: list[str] = []
        self._addresses = itertools.count(DEVICE_BASE, 1 << 24)
        self._handles = itertools.count(0x10)
        self.current_device = None

    def _result(self, *values):
        return (self.status, *values) if self.status is CudaError.cudaSuccess else (self.status, *[None] * len(values))

    # ------------------------------------------------------------------ devices and errors
    def cudaGetErrorName(self, error):
        return CudaError.cudaSuccess, error.name.encode()

    def cudaGetDeviceCount(self):
        if self.status is CudaError.cudaSuccess and not self.devices:
            return CudaError.cudaErrorNoDevice, 0
        return self._result(len(self.devices))

    def cudaGetDeviceProperties(self, device):
        if device >= len(self.devices):
            return CudaError.cudaErrorInvalidValue, None
        name, major, minor = self.devices[device]
        return self._result(SimpleNamespace(name=name.encode() + b"\x00" * 8, major=major, minor=minor))

    def cudaSetDevice(self, device):
        self.calls.append("cudaSetDevice")
        self.current_device = device
        return self._result()

    # ------------------------------------------------------------------ memory
    def cudaMalloc(self, size):
        address = next(self._addresses)
        self.memory[address] = np.full(int(size), 0xAB, np.uint8)  # garbage, as fresh device memory is
        return self._result(address)

    def cudaFree(self, address):
        if address not in self.memory:
            raise FakeCudaError(f"cudaFree of {address:#x}, which is not an allocation")
        del self.memory[address]
        return self._result()

    def device_view(self, address: int, size: int) -> np.ndarray:
        """The ``size`` device bytes at ``address``; FakeCudaError outside every allocation."""
        for start, buffer in self.memory.items():
            if start <= address < start + buffer.size:
                offset = address - start
                if offset + size > buffer.size:
                    raise FakeCudaError(f"{size} bytes at {address:#x} run past the end of a {buffer.size}-byte "
                                        "allocation")
                return buffer[offset:offset + size]
        raise FakeCudaError(f"{address:#x} is not device memory")

    def _is_device(self, address: int) -> bool:
        return any(start <= address < start + buffer.size for start, buffer in self.memory.items())

    def _copy(self, dst, src, size, kind):
        size = int(size)
        if kind is MemcpyKind.cudaMemcpyHostToDevice:
            if self._is_device(src) or not self._is_device(dst):
                raise FakeCudaError("cudaMemcpyHostToDevice needs a host source and a device destination")
            data = ctypes.string_at(src, size)  # read the host bytes when the call is made
            return lambda: self.device_view(dst, size).__setitem__(slice(None), np.frombuffer(data, np.uint8))
        if kind is MemcpyKind.cudaMemcpyDeviceToHost:
            if self._is_device(dst) or not self._is_device(src):
                raise FakeCudaError("cudaMemcpyDeviceToHost needs a device source and a host destination")
            self.device_view(src, size)  # bounds are checked at the call

            def copy():
                ctypes.memmove(dst, self.device_view(src, size).ctypes.data, size)
            return copy
        raise FakeCudaError(f"copy kind {kind} is not used by meltok")

    def cudaMemcpy(self, dst, src, size, kind):
        self._copy(dst, src, size, kind)()
        return self._result()

    def cudaMemcpyAsync(self, dst, src, size, kind, stream):
        self.calls.append(f"cudaMemcpyAsync {kind.name}")
        self.enqueue(stream, self._copy(dst, src, size, kind))
        return self._result()

    # ------------------------------------------------------------------ streams
    def cudaStreamCreateWithFlags(self, flags):
        handle = next(self._handles)
        self.streams[handle] = []
        return self._result(handle)

    def cudaStreamCreate(self):
        return self.cudaStreamCreateWithFlags(0)

    def enqueue(self, stream, work) -> None:
        if int(stream) == 0:
            raise FakeCudaError("work on the legacy default stream (0): meltok uses a stream of its own")
        if int(stream) not in self.streams:
            raise FakeCudaError(f"stream {stream} does not exist (destroyed?)")
        self.streams[int(stream)].append(work)

    def cudaStreamSynchronize(self, stream):
        self.calls.append("cudaStreamSynchronize")
        work, self.streams[int(stream)] = self.streams[int(stream)], []
        for item in work:
            item()
        return self._result()

    def cudaStreamDestroy(self, stream):
        if self.streams.pop(int(stream), None):
            raise FakeCudaError("a stream was destroyed with work still queued on it")
        return self._result()


# ---------------------------------------------------------------------------------- TensorRT
TRT_TYPES = {"float32": "FLOAT", "float16": "HALF", "int32": "INT32", "int64": "INT64"}
ONNX_TO_NUMPY = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int32)": "int32",
                 "tensor(int64)": "int64"}


def engine_bytes(onnx_bytes: bytes, profile: dict, dtypes: dict | None = None) -> bytes:
    """A fake engine file: a JSON header (profile, dtype overrides) and the ONNX graph."""
    header = json.dumps({"profile": profile, "dtypes": dtypes or {}}).encode()
    return len(header).to_bytes(4, "little") + header + onnx_bytes


class FakeContext:
    def __init__(self, engine):
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_input_shape(self, name, shape):
        limits = self.engine.profile[name]
        shape = tuple(int(size) for size in shape)
        if len(shape) != len(limits["min"]) or any(not lo <= s <= hi for s, lo, hi in
                                                   zip(shape, limits["min"], limits["max"])):
            return False
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name):
        if name in self.shapes:
            return self.shapes[name]
        key = tuple(sorted(self.shapes.items()))
        if key not in self.engine.output_shapes:  # shape inference: run the graph once on zeros
            zeros = {n: np.zeros(s, ONNX_TO_NUMPY[self.engine.onnx_types[n]]) for n, s in self.shapes.items()}
            outputs = self.engine.session.run(None, zeros)
            self.engine.output_shapes[key] = {o.name: v.shape for o, v in zip(self.engine.session.get_outputs(),
                                                                              outputs)}
        return self.engine.output_shapes[key][name]

    def set_tensor_address(self, name, address):
        self.addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream):
        engine, cudart = self.engine, self.engine.cudart
        missing = [n for n in engine.names if n not in self.addresses]
        if missing or set(engine.inputs) - set(self.shapes):
            raise FakeCudaError(f"execute_async_v3 with unbound tensors {missing} or unset shapes")
        shapes = dict(self.shapes)
        addresses = dict(self.addresses)

        def run():
            feeds = {}
            for name in engine.inputs:
                dtype = engine.dtypes[name]
                raw = cudart.device_view(addresses[name], int(np.prod(shapes[name])) * dtype.itemsize)
                feeds[name] = raw.view(dtype).reshape(shapes[name]).astype(ONNX_TO_NUMPY[engine.onnx_types[name]])
            for output, value in zip(engine.session.get_outputs(), engine.session.run(None, feeds)):
                data = np.ascontiguousarray(value, dtype=engine.dtypes[output.name]).view(np.uint8).ravel()
                cudart.device_view(addresses[output.name], data.size)[:] = data
        cudart.enqueue(stream, run)
        return True


class FakeEngine:
    def __init__(self, trt, cudart, data: bytes):
        size = int.from_bytes(data[:4], "little")
        header = json.loads(data[4:4 + size])
        self.session = onnxruntime.InferenceSession(data[4 + size:], providers=["CPUExecutionProvider"])
        self.trt, self.cudart, self.profile = trt, cudart, header["profile"]
        self.onnx_types = {v.name: v.type for v in (*self.session.get_inputs(), *self.session.get_outputs())}
        self.inputs = [v.name for v in self.session.get_inputs()]
        self.names = self.inputs + [v.name for v in self.session.get_outputs()]
        self.dtypes = {name: np.dtype(header["dtypes"].get(name, ONNX_TO_NUMPY[self.onnx_types[name]]))
                       for name in self.names}
        self.num_io_tensors = len(self.names)
        self.output_shapes: dict = {}

    def get_tensor_name(self, index):
        return self.names[index]

    def get_tensor_mode(self, name):
        return self.trt.TensorIOMode.INPUT if name in self.inputs else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return self.trt.DataType[TRT_TYPES[self.dtypes[name].name]]

    def create_execution_context(self):
        return FakeContext(self)


def fake_tensorrt(cudart: FakeCudart, version: str = "10.3.0", name: str = "tensorrt") -> ModuleType:
    """A ``tensorrt`` (or ``tensorrt_lean``) module whose engines run on ``cudart``'s memory."""
    trt = ModuleType(name)
    trt.__version__ = version
    trt.TensorIOMode = enum.Enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.DataType = enum.Enum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5,
                                          "INT64": 8})
    trt.deserialized = []

    class Logger:
        WARNING = 2

        def __init__(self, level=None):
            self.level = level

    class Runtime:
        def __init__(self, logger):
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, data):
            trt.deserialized.append({"bytes": len(data), "host_code": self.engine_host_code_allowed})
            try:
                return FakeEngine(trt, cudart, bytes(data))
            except Exception:  # noqa: BLE001 - TensorRT returns None for a file it cannot read
                return None

    trt.Logger, trt.Runtime = Logger, Runtime
    return trt


# ---------------------------------------------------------------------------------- ONNX Runtime CUDA
class FakeIOBinding:
    def __init__(self, session):
        self.session, self.inputs, self.outputs, self.synchronized, self.results = session, {}, [], False, None

    def bind_cpu_input(self, name, array):
        self.inputs[name] = np.array(array, copy=True)  # the host-to-device copy, pending
        self.synchronized = False

    def synchronize_inputs(self):
        self.synchronized = True

    def bind_output(self, name, device_type="cpu", device_id=0):
        if device_type != "cuda" or device_id != 0:
            raise FakeCudaError(f"output {name!r} bound on {device_type}:{device_id}, expected cuda:0")
        self.outputs.append(name)

    def copy_outputs_to_cpu(self):
        if self.results is None:
            raise FakeCudaError("copy_outputs_to_cpu before run_with_iobinding")
        return [np.array(value, copy=True) for value in self.results]


class FakeOrtSession:
    def __init__(self, module, data, sess_options=None, providers=None):
        self.module, self.providers = module, providers
        self.inner = onnxruntime.InferenceSession(data, sess_options=sess_options, providers=["CPUExecutionProvider"])
        module.sessions.append(self)

    def get_inputs(self):
        return self.inner.get_inputs()

    def get_outputs(self):
        return self.inner.get_outputs()

    def get_providers(self):
        return [p[0] if isinstance(p, tuple) else p for p in self.providers]

    def run(self, output_names, feeds):
        if self.get_providers()[0] != "CPUExecutionProvider":
            raise FakeCudaError("a CUDA session runs through IO binding in meltok")
        return self.inner.run(output_names, feeds)

    def io_binding(self):
        return FakeIOBinding(self)

    def run_with_iobinding(self, binding):
        if not binding.synchronized:
            raise FakeCudaError("run_with_iobinding before synchronize_inputs: the inputs may still be in flight")
        binding.results = self.inner.run(binding.outputs, binding.inputs)


class FakeOrtModule(ModuleType):
    """``onnxruntime`` as ``onnxruntime-gpu`` on a machine with a GPU: sessions run on the CPU underneath."""

    def __init__(self, providers=("CUDAExecutionProvider", "CPUExecutionProvider")):
        super().__init__("onnxruntime")
        self.__version__ = onnxruntime.__version__
        self.SessionOptions, self.GraphOptimizationLevel = onnxruntime.SessionOptions, onnxruntime.GraphOptimizationLevel
        self.available, self.sessions, self.severity = list(providers), [], None

    def get_available_providers(self):
        return list(self.available)

    def set_default_logger_severity(self, level):
        self.severity = level

    def InferenceSession(self, data, sess_options=None, providers=None):  # noqa: N802 - onnxruntime's name
        return FakeOrtSession(self, data, sess_options, providers)


class FakeDriver:
    """``libcuda`` through ctypes: ``cuInit``, ``cuDeviceGetCount`` and ``cuGetErrorName``."""

    NAMES = {100: b"CUDA_ERROR_NO_DEVICE", 35: b"CUDA_ERROR_INSUFFICIENT_DRIVER"}

    def __init__(self, count: int = 1, status: int = 0):
        self.count, self.status = count, status

    def cuInit(self, flags):  # noqa: N802 - the driver's names
        return self.status

    def cuDeviceGetCount(self, count):  # noqa: N802
        count._obj.value = self.count
        return 0

    def cuGetErrorName(self, status, name):  # noqa: N802
        name._obj.value = self.NAMES[status]
        return 0


# ---------------------------------------------------------------------------------- TensorRT builder
NORMALIZATIONS = {"InstanceNormalization", "LayerNormalization", "GroupNormalization"}


def fake_tensorrt_builder(cudart: FakeCudart, version: str = "10.13.0", *, parse_ok: bool = True,
                          cache_ok: bool = True) -> ModuleType:
    """``fake_tensorrt`` plus the builder API. Enum values are TensorRT's own: TensorRT 10 has
    ``STRONGLY_TYPED = 1`` (beside ``EXPLICIT_BATCH = 0``) and the weak-typing flags; TensorRT 11 keeps only
    ``STRONGLY_TYPED = 0`` (deprecated: every network is strongly typed) and drops ``FP16`` and
    ``OBEY_PRECISION_CONSTRAINTS``. A build returns a fake engine of the parsed ONNX file with the profile."""
    import onnx

    trt = fake_tensorrt(cudart, version)
    ten = version.startswith("10.")
    trt.NetworkDefinitionCreationFlag = enum.IntEnum(
        "NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1} if ten else {"STRONGLY_TYPED": 0})
    flags = {"TF32": 6, "VERSION_COMPATIBLE": 13, "EXCLUDE_LEAN_RUNTIME": 14}
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", {**flags, **({"FP16": 0, "OBEY_PRECISION_CONSTRAINTS": 9} if ten
                                                                else {})})
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.LayerType = enum.Enum("LayerType", ["NORMALIZATION", "OTHER"])
    trt.float32, trt.float16 = trt.DataType.FLOAT, trt.DataType.HALF
    log = trt.log = {"set": set(), "cleared": set(), "profiles": None, "cache_in": None}

    class Layer:
        def __init__(self, node):
            self.name, self.precision, self.num_outputs = node.name, None, len(node.output)
            self.type = trt.LayerType.NORMALIZATION if node.op_type in NORMALIZATIONS else trt.LayerType.OTHER
            self.types = {i: trt.float16 for i in range(self.num_outputs)}

        def get_output_type(self, index):
            return self.types[index]

        def set_output_type(self, index, dtype):
            self.types[index] = dtype

    class Network:
        def __init__(self, flags):
            log["network_flags"], self.layers, self.path = flags, [], None

        @property
        def num_layers(self):
            return len(self.layers)

        def get_layer(self, index):
            return self.layers[index]

    class Parser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0 if parse_ok else 1
            log["network"] = network

        def parse_from_file(self, path):
            self.network.path = path
            self.network.layers = [Layer(node) for node in onnx.load(path).graph.node]
            return parse_ok

        def get_error(self, index):
            return "In node 3 (Foo): UNSUPPORTED_NODE"

    class Cache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+timing"

    class Config:
        def set_flag(self, flag):
            log["set"].add(flag.name)

        def clear_flag(self, flag):
            log["cleared"].add(flag.name)

        def set_memory_pool_limit(self, pool, size):
            log["workspace"] = size

        def add_optimization_profile(self, profile):
            log["profiles"] = profile.shapes

        def create_timing_cache(self, data):
            log["cache_in"] = bytes(data)
            return Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return cache_ok or not cache.data

        def get_timing_cache(self):
            return self.cache

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            self.shapes[name] = {"min": list(low), "opt": list(opt), "max": list(high)}

    class Builder:
        def __init__(self, logger):
            pass

        create_network = staticmethod(lambda flags: Network(flags))
        create_builder_config = staticmethod(Config)
        create_optimization_profile = staticmethod(Profile)

        def build_serialized_network(self, network, config):
            with open(network.path, "rb") as handle:
                return engine_bytes(handle.read(), log["profiles"])

    trt.Builder, trt.OnnxParser = Builder, Parser
    return trt
