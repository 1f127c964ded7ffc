"""TensorRT backend: runs a bundle's ``.plan`` engine (TensorRT 10/11 Python API, imported lazily).

An engine runs only on the GPU architecture it was built for, with the TensorRT version that built it
(or, for a version-compatible engine, a later one of the same major), and only while it matches the
bundle's ONNX graph; ``check_engine`` refuses any mismatch before TensorRT ever sees the file.

Two runtimes: the full ``tensorrt`` (the builder's package) or, where only it is installed, the lean
runtime ``tensorrt_lean`` (``pip install -e '.[trt]'``, from PyPI alone). The lean runtime runs only
version-compatible engines (``meltok-export --engine trt --version-compatible``), whose runtime code
ships inside the engine: loading one needs engine host code allowed, which is granted only to a
version-compatible engine whose hash matches the bundle's manifest.

One execution context per optimisation profile (the window profile, and the stream profile where the
engine has one: a call whose inputs fit it runs there), one non-default CUDA stream, one set of device
buffers and one set of page-locked host buffers per backend: buffers are reused while shapes repeat and
grown when a larger input comes; every ``run`` sets and checks the input shapes, casts the inputs into
the pinned buffers (the engine's dtypes), copies them to the device, enqueues with ``execute_async_v3``,
copies the outputs back into pinned memory, synchronises the stream and hands the caller copies. Runs are serialised by the base class
(``serialize_runs``): the context and buffers are shared state.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging

import numpy as np

from meltok_runtime.errors import BackendError, BundleError, EngineMismatchError, InputSpecError, MissingDependencyError
from meltok_runtime.manifest import GRAPH_NAMES, EngineEntry, Manifest
from meltok_runtime.optional import import_optional
from meltok_runtime.backends.base import Backend
from meltok_runtime.backends.cuda import cuda_call, device_properties, import_cudart

log = logging.getLogger("meltok_runtime")

TRT_RUNTIME_INSTALL = "pip install -e '.[trt]' (TensorRT's lean runtime and cuda-python, from PyPI)"
TRT_BUILD_INSTALL = "pip install -e '.[trt-build]' --extra-index-url https://pypi.nvidia.com"
NUMPY_TYPES = {"FLOAT": "float32", "HALF": "float16", "INT32": "int32", "INT64": "int64", "INT8": "int8",
               "UINT8": "uint8", "BOOL": "bool"}


def import_tensorrt():
    """``(module, lean)``: the full ``tensorrt`` if installed, else the lean runtime ``tensorrt_lean``."""
    try:
        return import_optional("tensorrt", install=TRT_RUNTIME_INSTALL, purpose="the trt backend"), False
    except MissingDependencyError:
        pass
    try:
        return import_optional("tensorrt_lean", install=TRT_RUNTIME_INSTALL, purpose="the trt backend"), True
    except MissingDependencyError:
        raise MissingDependencyError(f"the trt backend needs TensorRT (the full `tensorrt` or its lean runtime "
                                     f"`tensorrt_lean`), and neither is installed: {TRT_RUNTIME_INSTALL}, on a "
                                     "machine with an NVIDIA GPU") from None


def _no_engine(graphs) -> str:
    """Why the trt backend cannot run: no engine for ``graphs`` (in the runtime's order), and what to run."""
    missing = " and ".join(name for name in GRAPH_NAMES if name in graphs)
    return (f"the bundle has no TensorRT engine for its {missing} graph{'s' if ' and ' in missing else ''}; build "
            f"them on this machine with `meltok-rt engines BUNDLE` (needs TensorRT's builder: JetPack's, or "
            f"{TRT_BUILD_INSTALL}), or use --backend ort-cuda or ort-cpu")


def _version(text: str) -> tuple:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def _runs_with(entry: EngineEntry, tensorrt_version: str) -> bool:
    """The same TensorRT version, or a version-compatible engine under a later release of its major."""
    if entry.tensorrt_version == tensorrt_version:
        return True
    built, here = _version(entry.tensorrt_version), _version(tensorrt_version)
    return entry.version_compatible and built[:1] == here[:1] and here >= built


def check_engine(manifest: Manifest, graph: str, *, tensorrt_version: str, compute_capability: str,
                 lean: bool = False) -> EngineEntry:
    """The bundle's engine for ``graph`` that may run here, or a typed error saying why none may.

    BackendError: the bundle has no engine for the graph. EngineMismatchError (both a
    ModelMismatchError and a BackendError): engines exist but were built for another GPU
    architecture or TensorRT version, from another ONNX file, or (``lean``: under TensorRT's lean
    runtime) without the version-compatible flag.
    """
    entries = [entry for entry in manifest.engines if entry.graph == graph]
    if not entries:
        raise BackendError(_no_engine([graph]))
    matching = [entry for entry in entries if entry.compute_capability == compute_capability
                and _runs_with(entry, tensorrt_version)]
    if not matching:
        built = ", ".join(f"compute capability {e.compute_capability} ({e.device_name}) with TensorRT "
                          f"{e.tensorrt_version}" for e in entries)
        raise EngineMismatchError(
            f"the bundle's {graph} engine was built for {built}, but this machine has compute capability "
            f"{compute_capability} and TensorRT {tensorrt_version}; an engine runs only where both match: rebuild "
            "it here with `meltok-rt engines BUNDLE --force`, or use --backend ort-cuda")
    entry = matching[0]
    if lean and not entry.version_compatible:
        raise EngineMismatchError(
            f"the bundle's {graph} engine was not built version-compatible, and only TensorRT's lean runtime "
            "(tensorrt_lean) is installed here, which runs version-compatible engines only: rebuild it with "
            f"`meltok-rt engines BUNDLE --force --version-compatible`, or install the full TensorRT ({TRT_BUILD_INSTALL})")
    expected = manifest.graphs[graph].sha256
    if entry.onnx_sha256 != expected:
        raise EngineMismatchError(
            f"the bundle's {graph} engine {entry.file!r} was built from another ONNX file (sha256 "
            f"{entry.onnx_sha256[:12]}...) than the bundle's {graph} graph ({expected[:12]}...); it is stale: "
            "rebuild it with `meltok-rt engines BUNDLE --force`")
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


def gpu_here(cudart, device: int) -> tuple[str, str]:
    """``(compute capability, name)`` of ``device``; BackendError naming the CUDA error where there is none."""
    if not cuda_call(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount"):
        raise BackendError("TensorRT is installed but CUDA reports no GPU: check CUDA_VISIBLE_DEVICES and "
                           "`nvidia-smi`, or use --backend ort-cpu")
    return device_properties(cudart, device)


class TrtBackend(Backend):
    """A TensorRT engine of the bundle, on CUDA device 0."""

    name = "trt"
    serialize_runs = True
    device = 0

    @classmethod
    def check_available(cls, bundle, manifest) -> None:
        missing = [graph for graph in manifest.graphs if not any(e.graph == graph for e in manifest.engines)]
        if missing:
            raise BackendError(_no_engine(missing))
        trt, lean = import_tensorrt()
        capability, _ = gpu_here(import_cudart(), cls.device)
        for graph in manifest.graphs:
            check_engine(manifest, graph, tensorrt_version=trt.__version__, compute_capability=capability, lean=lean)

    def _open(self) -> None:
        trt, lean = import_tensorrt()
        cudart = self._cudart = import_cudart()
        capability, device_name = gpu_here(cudart, self.device)
        cuda_call(cudart, cudart.cudaSetDevice(self.device), "cudaSetDevice")
        entry = check_engine(self.manifest, self.graph_name, tensorrt_version=trt.__version__,
                             compute_capability=capability, lean=lean)
        if entry.device_name != device_name:
            log.warning("the %s engine was built on a %s and runs on a %s (same compute capability %s): it is "
                        "valid, but its kernels were timed on the other GPU; rebuild it here for full speed",
                        self.graph_name, entry.device_name, device_name, capability)
        data = read_engine(self.bundle, entry)  # the hash check that allows engine host code below
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if entry.version_compatible:
            self._runtime.engine_host_code_allowed = True
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise BackendError(f"TensorRT could not load the engine {entry.file!r} (see its log above); rebuild it "
                               "with `meltok-export --engine trt`")
        self._profiles = [entry.profile] + ([entry.stream_profile] if entry.stream_profile else [])
        flags = cudart.cudaStreamNonBlocking  # a stream of our own, not synchronised with the legacy default one
        self._stream = cuda_call(cudart, cudart.cudaStreamCreateWithFlags(flags), "cudaStreamCreateWithFlags")
        self._contexts = []  # one execution context per optimisation profile
        for index in range(len(self._profiles)):
            context = self._engine.create_execution_context()
            if context is None:
                raise BackendError("TensorRT could not create an execution context (out of GPU memory?); rebuild the "
                                   "engine with a smaller profile (--max-seconds, --max-batch)")
            if index and not context.set_optimization_profile_async(index, int(self._stream)):
                raise BackendError(f"the engine {entry.file!r} has no optimisation profile {index} although its "
                                   "manifest entry lists a stream profile; rebuild it with `meltok-rt engines`")
            self._contexts.append(context)
        cuda_call(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {name: self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT for name in names}
        self._input_names = [name for name in names if is_input[name]]
        self._output_names = [name for name in names if not is_input[name]]
        want_in, want_out = [s.name for s in self.inputs], [s.name for s in self.outputs]
        if sorted(self._input_names) != sorted(want_in) or not set(want_out) <= set(self._output_names):
            raise BundleError(f"the engine {entry.file!r} has inputs {self._input_names} and outputs "
                              f"{self._output_names}, but the manifest lists {want_in} and {want_out}; re-export")
        self._dtypes = {name: np.dtype(NUMPY_TYPES[self._engine.get_tensor_dtype(name).name]) for name in names}
        self._buffers: dict = {}  # name -> [device pointer, capacity in bytes]
        self._host: dict = {}  # name -> [page-locked host pointer, capacity in bytes]

    def _device_buffer(self, name: str, nbytes: int) -> int:
        """A device buffer of at least ``nbytes`` for ``name``, reused while large enough."""
        return self._grow(self._buffers, name, nbytes, "cudaMalloc", "cudaFree")

    def _host_buffer(self, name: str, nbytes: int) -> np.ndarray:
        """``nbytes`` of page-locked host memory for ``name`` (a uint8 view), reused while large enough: copies
        from and to it are truly asynchronous, and no call pays for pinning memory again."""
        pointer = self._grow(self._host, name, nbytes, "cudaMallocHost", "cudaFreeHost")
        return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(pointer)) if nbytes else np.empty(0, np.uint8)

    def _grow(self, pool: dict, name: str, nbytes: int, allocate: str, free: str) -> int:
        cudart = self._cudart
        buffer = pool.get(name)
        if buffer is None or buffer[1] < nbytes:
            if buffer is not None:
                cuda_call(cudart, getattr(cudart, free)(buffer[0]), free)
                del pool[name]
            capacity = max(nbytes, 256)
            pool[name] = [cuda_call(cudart, getattr(cudart, allocate)(capacity), allocate), capacity]
        return int(pool[name][0])

    def _context_for(self, feeds: dict):
        """The stream profile's context where every input fits that profile, else the window profile's:
        ``(context, profile)``."""
        for context, profile in reversed(list(zip(self._contexts, self._profiles))):
            if all(_fits(feeds[name].shape, profile.get(name)) for name in self._input_names):
                return context, profile
        return self._contexts[0], self._profiles[0]

    def _run(self, feeds: dict) -> dict:
        cudart, stream = self._cudart, self._stream
        context, profile = self._context_for(feeds)
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for name in self._input_names:
            array = feeds[name]
            if not context.set_input_shape(name, tuple(array.shape)):
                limits = profile.get(name, {})
                raise InputSpecError(f"input {name!r} of shape {list(array.shape)} is outside the engine's "
                                     f"optimisation profile (min {limits.get('min')}, max {limits.get('max')}); "
                                     "rebuild the engine with a larger range or use --backend ort-cuda")
            dtype = self._dtypes[name]
            nbytes = array.size * dtype.itemsize
            staged = self._host_buffer(name, nbytes)
            staged[:] = np.ascontiguousarray(array, dtype=dtype).view(np.uint8).ravel()  # cast into pinned memory
            pointer = self._device_buffer(name, nbytes)
            cuda_call(cudart, cudart.cudaMemcpyAsync(pointer, staged.ctypes.data, nbytes, to_device, stream),
                      "cudaMemcpyAsync (input)")
            context.set_tensor_address(name, pointer)
        shapes = {}
        for name in self._output_names:
            shape = tuple(context.get_tensor_shape(name))
            if any(size < 0 for size in shape):
                raise BackendError(f"TensorRT could not infer the shape of output {name!r} ({list(shape)})")
            shapes[name] = shape
            nbytes = int(np.prod(shape)) * self._dtypes[name].itemsize
            context.set_tensor_address(name, self._device_buffer(name, nbytes))
        if not context.execute_async_v3(int(stream)):
            raise BackendError(f"TensorRT failed to run the {self.graph_name} engine (see its log above)")
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        staged = {}
        for name, shape in shapes.items():
            staged[name] = self._host_buffer(name, int(np.prod(shape)) * self._dtypes[name].itemsize)
            cuda_call(cudart, cudart.cudaMemcpyAsync(staged[name].ctypes.data, self._buffers[name][0],
                                                     staged[name].nbytes, to_host, stream), "cudaMemcpyAsync (output)")
        cuda_call(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        # the caller owns its outputs: copied out of the pinned buffers, which the next run overwrites
        return {name: staged[name].view(self._dtypes[name]).reshape(shapes[name]).copy() for name in shapes}

    def _close(self) -> None:
        cudart = self._cudart
        for pointer, _ in self._buffers.values():
            cudart.cudaFree(pointer)
        for pointer, _ in self._host.values():
            cudart.cudaFreeHost(pointer)
        self._buffers, self._host = {}, {}
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self._contexts = []  # the contexts before their engine, the engine before its runtime
        self._engine = None
        self._runtime = None


def _fits(shape, limits) -> bool:
    return bool(limits) and len(shape) == len(limits["min"]) and all(
        low <= size <= high for size, low, high in zip(shape, limits["min"], limits["max"]))
