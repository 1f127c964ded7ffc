"""TensorRT backend: runs a bundle's ``.plan`` engine (TensorRT 10 API, imported lazily).

An engine runs only on the GPU architecture and TensorRT version it was built with, and only
while it matches the bundle's ONNX graph; ``check_engine`` refuses any mismatch before TensorRT
ever sees the file (a mismatched engine is never run). Needs ``tensorrt`` and ``cuda-python``
(``cuda.bindings.runtime``, or the older ``cuda.cudart``): ``pip install meltok[trt]``.

One execution context, one CUDA stream and one set of device buffers per backend: buffers are
reused while shapes repeat and grown when a larger input comes; every ``run`` sets the input
shapes, enqueues with ``execute_async_v3`` and synchronises. Runs are serialised by the base
class (``serialize_runs``): the context and buffers are shared state.
"""
from __future__ import annotations

import hashlib

import numpy as np

from ..errors import BackendError, BundleError, EngineMismatchError, InputSpecError
from ..manifest import EngineEntry, Manifest
from .base import Backend

INSTALL = "pip install tensorrt cuda-python (the meltok[trt] extra) on a machine with an NVIDIA GPU"


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as error:
        raise BackendError(f"TensorRT is not installed ({error}): {INSTALL}") from None
    return tensorrt


def import_cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as error:
            raise BackendError(f"cuda-python is not installed ({error}): {INSTALL}") from None
    return cudart


def cuda_call(cudart, result):
    """Unpack a cuda-python ``(error, *values)`` tuple; raise BackendError on a CUDA error."""
    error, values = result[0], result[1:]
    if error != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"CUDA call failed with {error!r}; check the NVIDIA driver and GPU")
    return values[0] if len(values) == 1 else (values or None)


def device_compute_capability(cudart, device: int) -> str:
    attr = cudart.cudaDeviceAttr
    major = cuda_call(cudart, cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device))
    minor = cuda_call(cudart, cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device))
    return f"{major}.{minor}"


def _no_engine(graph: str) -> str:
    return (f"the bundle has no TensorRT engine for its {graph} graph; build one on this machine with "
            "`meltok-export MODEL -o BUNDLE --engine trt`, or use --backend ort-cuda or ort-cpu")


def check_engine(manifest: Manifest, graph: str, *, tensorrt_version: str, compute_capability: str) -> EngineEntry:
    """The bundle's engine for ``graph`` that may run here, or a typed error saying why none may.

    BackendError: the bundle has no engine for the graph. EngineMismatchError (both a
    ModelMismatchError and a BackendError): engines exist but were built for another GPU
    architecture or TensorRT version, or from another ONNX file.
    """
    entries = [entry for entry in manifest.engines if entry.graph == graph]
    if not entries:
        raise BackendError(_no_engine(graph))
    matching = [entry for entry in entries if entry.compute_capability == compute_capability
                and entry.tensorrt_version == tensorrt_version]
    if not matching:
        built = ", ".join(f"compute capability {e.compute_capability} ({e.device_name}) with TensorRT "
                          f"{e.tensorrt_version}" for e in entries)
        raise EngineMismatchError(
            f"the bundle's {graph} engine was built for {built}, but this machine has compute capability "
            f"{compute_capability} and TensorRT {tensorrt_version}; an engine runs only where both match: rebuild "
            "it here with `meltok-export --engine trt`, or use --backend ort-cuda")
    entry = matching[0]
    expected = manifest.graphs[graph].sha256
    if entry.onnx_sha256 != expected:
        raise EngineMismatchError(
            f"the bundle's {graph} engine {entry.file!r} was built from another ONNX file (sha256 "
            f"{entry.onnx_sha256[:12]}...) than the bundle's {graph} graph ({expected[:12]}...); it is stale: "
            "rebuild it with `meltok-export --engine trt`")
    return entry


def read_engine(bundle, entry: EngineEntry) -> bytes:
    """The engine file's bytes, checked against the manifest's hash (BundleError otherwise)."""
    path = bundle / entry.file
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BundleError(f"cannot read the TensorRT engine {str(path)!r} ({error}); the bundle is incomplete: "
                          "re-export it") from None
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise BundleError(f"the TensorRT engine {str(path)!r} does not match the hash in its manifest; the file is "
                          "corrupt or was modified: re-export the bundle")
    return data


class TrtBackend(Backend):
    """A TensorRT engine of the bundle, on CUDA device 0."""

    name = "trt"
    serialize_runs = True
    device = 0

    @classmethod
    def check_available(cls, bundle, manifest) -> None:
        for graph in manifest.graphs:
            if not any(entry.graph == graph for entry in manifest.engines):
                raise BackendError(_no_engine(graph))
        trt = import_tensorrt()
        cudart = import_cudart()
        count = cuda_call(cudart, cudart.cudaGetDeviceCount()) if _has_device(cudart) else 0
        if not count:
            raise BackendError(f"TensorRT is installed but no NVIDIA GPU is visible: {INSTALL}")
        capability = device_compute_capability(cudart, cls.device)
        for graph in manifest.graphs:
            check_engine(manifest, graph, tensorrt_version=trt.__version__, compute_capability=capability)

    def _open(self) -> None:
        trt = import_tensorrt()
        cudart = self._cudart = import_cudart()
        cuda_call(cudart, cudart.cudaSetDevice(self.device))
        entry = check_engine(self.manifest, self.graph_name, tensorrt_version=trt.__version__,
                             compute_capability=device_compute_capability(cudart, self.device))
        data = read_engine(self.bundle, entry)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise BackendError(f"TensorRT could not load the engine {entry.file!r} (see its log above); rebuild it "
                               "with `meltok-export --engine trt`")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BackendError("TensorRT could not create an execution context (out of GPU memory?)")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {name: self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT for name in names}
        self._input_names = [name for name in names if is_input[name]]
        self._output_names = [name for name in names if not is_input[name]]
        want_in, want_out = [s.name for s in self.inputs], [s.name for s in self.outputs]
        if sorted(self._input_names) != sorted(want_in) or not set(want_out) <= set(self._output_names):
            raise BundleError(f"the engine {entry.file!r} has inputs {self._input_names} and outputs "
                              f"{self._output_names}, but the manifest lists {want_in} and {want_out}; re-export")
        self._dtypes = {name: np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))) for name in names}
        self._profile = entry.profile
        self._buffers: dict = {}  # name -> [device pointer, capacity in bytes]
        self._stream = cuda_call(cudart, cudart.cudaStreamCreate())

    def _device_buffer(self, name: str, nbytes: int) -> int:
        """A device buffer of at least ``nbytes`` for ``name``, reused while large enough."""
        cudart = self._cudart
        buffer = self._buffers.get(name)
        if buffer is None or buffer[1] < nbytes:
            if buffer is not None:
                cuda_call(cudart, cudart.cudaFree(buffer[0]))
                del self._buffers[name]
            capacity = max(nbytes, 256)
            self._buffers[name] = [cuda_call(cudart, cudart.cudaMalloc(capacity)), capacity]
        return int(self._buffers[name][0])

    def _run(self, feeds: dict) -> dict:
        cudart, context, stream = self._cudart, self._context, self._stream
        cuda_call(cudart, cudart.cudaSetDevice(self.device))  # this thread may not have used the GPU yet
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for name in self._input_names:
            array = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
            if not context.set_input_shape(name, tuple(array.shape)):
                limits = self._profile.get(name, {})
                raise InputSpecError(f"input {name!r} of shape {list(array.shape)} is outside the engine's "
                                     f"optimisation profile (min {limits.get('min')}, max {limits.get('max')}); "
                                     "rebuild the engine with a larger range or use --backend ort-cuda")
            pointer = self._device_buffer(name, array.nbytes)
            cuda_call(cudart, cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, to_device, stream))
            context.set_tensor_address(name, pointer)
        hosts = {}
        for name in self._output_names:
            shape = tuple(context.get_tensor_shape(name))
            if any(size < 0 for size in shape):
                raise BackendError(f"TensorRT could not infer the shape of output {name!r} ({list(shape)})")
            hosts[name] = np.empty(shape, dtype=self._dtypes[name])
            context.set_tensor_address(name, self._device_buffer(name, hosts[name].nbytes))
        if not context.execute_async_v3(int(stream)):
            raise BackendError(f"TensorRT failed to run the {self.graph_name} engine (see its log above)")
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, host in hosts.items():
            cuda_call(cudart, cudart.cudaMemcpyAsync(host.ctypes.data, self._buffers[name][0], host.nbytes,
                                                     to_host, stream))
        cuda_call(cudart, cudart.cudaStreamSynchronize(stream))
        return hosts

    def _close(self) -> None:
        cudart = self._cudart
        for pointer, _ in self._buffers.values():
            cudart.cudaFree(pointer)
        self._buffers = {}
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = None  # the context before its engine, the engine before its runtime
        self._engine = None
        self._runtime = None


def _has_device(cudart) -> bool:
    """False (instead of an error) where the CUDA driver is missing or sees no GPU."""
    error, _ = cudart.cudaGetDeviceCount()
    return error == cudart.cudaError_t.cudaSuccess
