"""TensorRT on the emulated GPU: engines are the bundle's ONNX graphs, run by ONNX Runtime CPU on device bytes."""
from __future__ import annotations

import enum
import json
from types import ModuleType

import numpy as np
import onnxruntime

from .cuda_device import FakeCudaError, FakeCudart


# ---------------------------------------------------------------------------------- TensorRT
TRT_TYPES = {"float32": "FLOAT", "float16": "HALF", "int32": "INT32", "int64": "INT64"}
ONNX_TO_NUMPY = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int32)": "int32",
                 "tensor(int64)": "int64"}


def engine_bytes(onnx_bytes: bytes, profiles, dtypes: dict | None = None) -> bytes:
    """A fake engine file: a JSON header (optimisation profiles, a dict for one or a list, dtype overrides)
    and the ONNX graph."""
    profiles = [profiles] if isinstance(profiles, dict) else list(profiles)
    header = json.dumps({"profiles": profiles, "dtypes": dtypes or {}}).encode()
    return len(header).to_bytes(4, "little") + header + onnx_bytes


class FakeContext:
    def __init__(self, engine):
        self.engine, self.shapes, self.addresses, self.profile = engine, {}, {}, 0

    def set_optimization_profile_async(self, index, stream):
        if not 0 <= index < len(self.engine.profiles):
            return False
        self.profile, self.shapes = index, {}
        return True

    def set_input_shape(self, name, shape):
        limits = self.engine.profiles[self.profile][name]
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
        engine.trt.executions.append(self.profile)

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
        self.trt, self.cudart, self.profiles = trt, cudart, header["profiles"]
        self.num_optimization_profiles = len(self.profiles)
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
    trt.executions = []  # the optimisation profile of every execute_async_v3

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


# ---------------------------------------------------------------------------------- TensorRT builder
NORMALIZATIONS = {"InstanceNormalization", "LayerNormalization", "GroupNormalization"}


def fake_tensorrt_builder(cudart: FakeCudart, version: str = "10.13.0", *, parse_ok: bool = True,
                          cache_ok: bool = True, extra_layers=()) -> ModuleType:
    """``fake_tensorrt`` plus the builder API. Enum values are TensorRT's own: TensorRT 10 has
    ``STRONGLY_TYPED = 1`` (beside ``EXPLICIT_BATCH = 0``) and the weak-typing flags; TensorRT 11 keeps only
    ``STRONGLY_TYPED = 0`` (deprecated: every network is strongly typed) and drops ``FP16`` and
    ``OBEY_PRECISION_CONSTRAINTS``. Layers are the ONNX nodes, by name, plus ``extra_layers`` (names of
    layers the parser adds). A build returns a fake engine of the parsed ONNX file with its profiles."""
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
    log = trt.log = {"set": set(), "cleared": set(), "profiles": [], "cache_in": None}

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
            nodes = list(onnx.load(path).graph.node) + [onnx.helper.make_node("Identity", [], [""], name=name)
                                                        for name in extra_layers]
            self.network.layers = [Layer(node) for node in nodes]
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
            log["profiles"].append(profile.shapes)

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
            log["profiles"] = []

        create_network = staticmethod(lambda flags: Network(flags))
        create_builder_config = staticmethod(Config)
        create_optimization_profile = staticmethod(Profile)

        def build_serialized_network(self, network, config):
            with open(network.path, "rb") as handle:
                return engine_bytes(handle.read(), log["profiles"])

    trt.Builder, trt.OnnxParser = Builder, Parser
    return trt
