"""``onnxruntime`` as ``onnxruntime-gpu`` on a machine with a GPU; sessions run on the CPU underneath."""
from __future__ import annotations

from types import ModuleType

import numpy as np
import onnxruntime

from .cuda_device import FakeCudaError


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
