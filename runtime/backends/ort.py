"""ONNX Runtime backends: ``ort-cpu`` and ``ort-cuda`` (``onnxruntime`` is imported lazily).

``onnxruntime`` (CPU) and ``onnxruntime-gpu`` (CUDA and CPU) install the same module; only the
latter has the CUDA execution provider. Sessions use every graph optimisation and run
concurrent ``run`` calls in parallel (ONNX Runtime sessions are thread-safe).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading

from meltok_runtime.errors import BackendError, BundleError
from meltok_runtime.optional import import_optional
from meltok_runtime.backends.base import Backend
from meltok_runtime.backends.cuda import driver_device_count

CPU_INSTALL = "pip install -e '.[cpu]'"
GPU_INSTALL = "pip uninstall -y onnxruntime && pip install -e '.[gpu]'"
CUDA_FIX = f"on a machine with an NVIDIA GPU, replace onnxruntime by onnxruntime-gpu: {GPU_INSTALL}"

ONNX_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int32)": "int32",
              "tensor(int64)": "int64", "tensor(double)": "float64"}
QUIET = 3  # ONNX Runtime log severity: errors only (no provider placement or fallback chatter)

_preload_lock = threading.Lock()
_preloaded = False
_stdout_lock = threading.Lock()


def import_onnxruntime():
    """The ``onnxruntime`` module (from ``onnxruntime`` or ``onnxruntime-gpu``), quiet by default."""
    ort = import_optional("onnxruntime", install=f"{CPU_INSTALL} (or, with an NVIDIA GPU, {GPU_INSTALL})",
                          purpose="running a bundle")
    ort.set_default_logger_severity(QUIET)
    return ort


@contextlib.contextmanager
def stdout_to_stderr():
    """Within the block, file descriptor 1 writes to stderr: text that ONNX Runtime's native code prints
    while it loads providers can never mix into a command's stdout (``meltok-rt info`` prints JSON there)."""
    with _stdout_lock:
        try:
            sys.stdout.flush()
            saved = os.dup(1)
            os.dup2(2, 1)
        except (OSError, ValueError):  # no file descriptors 1/2 (an embedding host): nothing to protect
            yield
            return
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def _preload_cuda_libraries(ort) -> None:
    """Let onnxruntime-gpu find CUDA/cuDNN from the nvidia-* wheels (ORT >= 1.21), once."""
    global _preloaded
    with _preload_lock:
        if _preloaded or not hasattr(ort, "preload_dlls"):
            return
        _preloaded = True
        try:
            ort.preload_dlls()
        except Exception:  # noqa: BLE001 - best effort: system CUDA libraries may still be found
            pass


def cuda_provider_options(device_id: int = 0) -> dict:
    """The CUDA execution provider's options for a bundle's graphs.

    - ``use_tf32: 0`` (onnxruntime-gpu >= 1.18): float32 products and convolutions stay float32, so the
      tokens equal the CPU's; with TF32 (the provider's default) the float32 islands lose 13 mantissa bits.
    - ``cudnn_conv_algo_search: HEURISTIC``: cuDNN's own choice of convolution algorithm. The default
      (EXHAUSTIVE) times every algorithm again for each new input shape, and the codec meets new shapes all
      the time: the last window of every input and every stream push.
    """
    return {"device_id": device_id, "use_tf32": 0, "cudnn_conv_algo_search": "HEURISTIC"}


class OrtCpuBackend(Backend):
    """ONNX Runtime on the CPU; ``threads`` sets the intra-op thread count (default: all cores)."""

    name = "ort-cpu"

    @classmethod
    def check_available(cls, bundle, manifest) -> None:
        import_onnxruntime()

    def _providers(self, ort) -> list:
        return ["CPUExecutionProvider"]

    def _session_options(self, ort):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = QUIET
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        return options

    def _open(self) -> None:
        ort = import_onnxruntime()
        path = self.bundle / self.graph.file
        try:
            data = path.read_bytes()
        except OSError as error:
            raise BundleError(f"cannot read the {self.graph_name} graph {str(path)!r} ({error}); "
                              "the bundle is incomplete: re-export it") from None
        if hashlib.sha256(data).hexdigest() != self.graph.sha256:
            raise BundleError(f"the {self.graph_name} graph {str(path)!r} does not match the hash in its "
                              "manifest; the file is corrupt or was modified: re-export the bundle")
        try:
            with stdout_to_stderr():
                session = ort.InferenceSession(data, sess_options=self._session_options(ort),
                                               providers=self._providers(ort))
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own non-public types
            raise BundleError(f"ONNX Runtime cannot load the {self.graph_name} graph {str(path)!r} "
                              f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                              "re-export the bundle") from None
        names_in = [node.name for node in session.get_inputs()]
        names_out = [node.name for node in session.get_outputs()]
        want_in = [spec.name for spec in self.inputs]
        want_out = [spec.name for spec in self.outputs]
        if sorted(names_in) != sorted(want_in) or not set(want_out) <= set(names_out):
            raise BundleError(f"the {self.graph_name} graph has inputs {names_in} and outputs {names_out}, but "
                              f"its manifest lists {want_in} and {want_out}; re-export the bundle")
        for node in session.get_inputs():
            spec = next(spec for spec in self.inputs if spec.name == node.name)
            if ONNX_TYPES.get(node.type) != spec.dtype:
                raise BundleError(f"the {self.graph_name} graph's input {node.name!r} is {node.type}, but its "
                                  f"manifest says {spec.dtype}; re-export the bundle")
        self._check_session(session)
        self._session = session
        self._output_names = want_out

    def _check_session(self, session) -> None:
        """Hook for subclasses: refuse a session that did not get the wanted provider."""

    def _session_or_closed(self):
        """The session, or BackendError when ``close`` ran since ``run`` checked that it was open."""
        session = self._session
        if session is None:
            raise BackendError(f"the {self.name} backend for the {self.graph_name} graph was closed during the run")
        return session

    def _run(self, feeds: dict) -> dict:
        session = self._session_or_closed()
        return dict(zip(self._output_names, session.run(self._output_names, feeds)))

    def _close(self) -> None:
        self._session = None


class OrtCudaBackend(OrtCpuBackend):
    """ONNX Runtime with the CUDA execution provider (``onnxruntime-gpu``), on ``device_id`` 0, TF32 off.

    Inputs are bound from host memory (and synchronised onto the device before the run) and outputs
    bound on the device, then copied to the host once per call (IO binding), so ONNX Runtime allocates
    the outputs at their real size.
    """

    name = "ort-cuda"
    device_id = 0

    @classmethod
    def check_available(cls, bundle, manifest) -> None:
        ort = import_onnxruntime()
        providers = ort.get_available_providers()
        if "CUDAExecutionProvider" not in providers:
            raise BackendError(f"this onnxruntime has no CUDA execution provider (it has {providers}): {CUDA_FIX}")
        if driver_device_count() <= cls.device_id:
            raise BackendError("onnxruntime-gpu is installed but the NVIDIA driver sees no GPU: check "
                               "CUDA_VISIBLE_DEVICES and `nvidia-smi`, or use --backend ort-cpu")

    def _providers(self, ort) -> list:
        _preload_cuda_libraries(ort)
        return [("CUDAExecutionProvider", cuda_provider_options(self.device_id)), "CPUExecutionProvider"]

    def _check_session(self, session) -> None:
        if session.get_providers()[:1] != ["CUDAExecutionProvider"]:
            raise BackendError("ONNX Runtime could not start its CUDA execution provider (no NVIDIA GPU, or the "
                               "CUDA/cuDNN libraries are missing): install the NVIDIA driver and "
                               f"onnxruntime-gpu's CUDA dependencies, or {CUDA_FIX}")

    def _run(self, feeds: dict) -> dict:
        session = self._session_or_closed()
        binding = session.io_binding()  # one binding per call: bindings are not shared between threads
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        binding.synchronize_inputs()  # the host-to-device copies are done before the run reads them
        for name in self._output_names:
            binding.bind_output(name, "cuda", self.device_id)
        session.run_with_iobinding(binding)
        return dict(zip(self._output_names, binding.copy_outputs_to_cpu()))
