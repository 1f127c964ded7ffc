"""A stand-in for Triton's ``triton_python_backend_utils`` (the Python backend's ``pb_utils``), enough to
drive a repository's ``model.py`` without a Triton server.

It emulates the documented Python-backend API: numpy-backed ``Tensor``, ``InferenceRequest`` (also
the type of the requests ``execute`` receives) whose BLS ``exec()`` runs another model of the
repository, ``InferenceResponse``, ``TritonError``, ``get_input_tensor_by_name``,
``get_output_tensor_by_name``, ``PreferredMemory``. BLS calls go to ``FakeServer``, which reads each
graph model's ``config.pbtxt`` with Triton's own schema, checks every request against it as Triton
would (names, data types, dims, ``max_batch_size``) and runs the model's ONNX file with ONNX
Runtime on the CPU.
"""
import types
from pathlib import Path

import numpy as np
import onnxruntime
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

NUMPY_TYPES = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64}


def read_config(folder: Path) -> model_config_pb2.ModelConfig:
    """A model's ``config.pbtxt`` parsed with Triton's protobuf schema."""
    return text_format.Parse((Path(folder) / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def initialize_args(repo: Path, model: str) -> dict:
    """The ``args`` Triton passes to ``initialize``: the config as JSON, the model's folder and version."""
    config = json_format.MessageToJson(read_config(repo / model), preserving_proto_field_name=True)
    return {"model_config": config, "model_instance_kind": "CPU", "model_instance_name": f"{model}_0",
            "model_instance_device_id": "0", "model_repository": str(repo / model), "model_version": "1",
            "model_name": model}


class FakeServer:
    """The ``onnxruntime`` models of a repository, run on BLS requests; ``calls`` records
    ``(model, input shape)`` of each."""

    def __init__(self, repo: Path):
        self.models, self.calls, self.failing = {}, [], {}
        for folder in sorted(Path(repo).iterdir()):
            config = read_config(folder)
            if config.backend != "onnxruntime":
                continue
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = 1
            session = onnxruntime.InferenceSession(str(folder / "1" / "model.onnx"), options,
                                                   providers=["CPUExecutionProvider"])
            self.models[config.name] = (config, session)

    def infer(self, model_name: str, inputs: list, requested: list):
        """Check ``inputs`` against the model's config (as Triton does) and run it; an error response
        where Triton would give one."""
        if model_name not in self.models:
            return InferenceResponse([], error=TritonError(f"Request for unknown model: '{model_name}'"))
        if model_name in self.failing:
            return InferenceResponse([], error=TritonError(self.failing[model_name]))
        config, session = self.models[model_name]
        feeds = {tensor.name(): tensor.as_numpy() for tensor in inputs}
        for spec in config.input:
            array = feeds.get(spec.name)
            data_type = model_config_pb2.DataType.Name(spec.data_type)
            assert array is not None, f"{model_name}: input {spec.name!r} missing"
            assert array.dtype == NUMPY_TYPES[data_type], f"{model_name}: {spec.name} is {array.dtype}, not {data_type}"
            assert 1 <= array.shape[0] <= config.max_batch_size, f"{model_name}: batch {array.shape[0]} too large"
            dims = array.shape[1:]
            assert len(dims) == len(spec.dims) and all(d == -1 or d == n for d, n in zip(spec.dims, dims)), \
                f"{model_name}: {spec.name} shape {array.shape} does not fit dims {list(spec.dims)}"
            self.calls.append((model_name, array.shape))
        names = [spec.name for spec in config.output]
        assert set(requested) <= set(names), f"{model_name}: unknown outputs {requested}"
        results = session.run(requested, feeds)
        return InferenceResponse([Tensor(name, array) for name, array in zip(requested, results)])


class TritonError:
    def __init__(self, message: str):
        self._message = message

    def message(self) -> str:
        return self._message


class Tensor:
    def __init__(self, name: str, array):
        if not isinstance(array, np.ndarray):
            raise TypeError(f"pb_utils.Tensor takes a numpy array, got {type(array).__name__}")
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def is_cpu(self) -> bool:
        return True


class InferenceResponse:
    def __init__(self, output_tensors, error=None):
        self._outputs, self._error = list(output_tensors), error

    def output_tensors(self) -> list:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self):
        return self._error


class PreferredMemory:
    def __init__(self, preferred_memory_type, preferred_device_id=0):
        self.preferred_memory_type, self.preferred_device_id = preferred_memory_type, preferred_device_id


def make_pb_utils(server: FakeServer | None) -> types.ModuleType:
    """A ``triton_python_backend_utils`` module whose BLS calls go to ``server``."""
    module = types.ModuleType("triton_python_backend_utils")

    class InferenceRequest:
        def __init__(self, model_name=None, requested_output_names=(), inputs=(), preferred_memory=None, **kwargs):
            self.model_name, self.requested_output_names = model_name, list(requested_output_names)
            self._inputs, self.preferred_memory = list(inputs), preferred_memory

        def inputs(self) -> list:
            return self._inputs

        def exec(self):
            assert self.preferred_memory is None or self.preferred_memory.preferred_memory_type == \
                module.TRITONSERVER_MEMORY_CPU
            return server.infer(self.model_name, self._inputs, self.requested_output_names)

    def get_input_tensor_by_name(request, name):
        return next((tensor for tensor in request.inputs() if tensor.name() == name), None)

    def get_output_tensor_by_name(response, name):
        return next((tensor for tensor in response.output_tensors() if tensor.name() == name), None)

    module.__dict__.update(Tensor=Tensor, InferenceRequest=InferenceRequest, InferenceResponse=InferenceResponse,
                           TritonError=TritonError, PreferredMemory=PreferredMemory,
                           TRITONSERVER_MEMORY_CPU=0, TRITONSERVER_MEMORY_GPU=2,
                           get_input_tensor_by_name=get_input_tensor_by_name,
                           get_output_tensor_by_name=get_output_tensor_by_name)
    return module
