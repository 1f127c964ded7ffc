"""Backends that run a bundle's graphs, and the automatic choice between them.

``auto`` tries, in order, TensorRT (an engine in the bundle valid for this GPU and TensorRT
version), ONNX Runtime CUDA, then ONNX Runtime CPU. Inference libraries are imported only when
a backend is checked or opened, so this package imports with numpy alone.
"""
from __future__ import annotations

from meltok_runtime.errors import BackendError
from meltok_runtime.backends.base import Backend
from meltok_runtime.backends.ort import OrtCpuBackend, OrtCudaBackend
from meltok_runtime.backends.trt import TrtBackend

BACKENDS = {"trt": TrtBackend, "ort-cuda": OrtCudaBackend, "ort-cpu": OrtCpuBackend}
AUTO_ORDER = ("trt", "ort-cuda", "ort-cpu")
BACKEND_CHOICES = ("auto",) + AUTO_ORDER


def backend_class(name: str) -> type:
    """The Backend class called ``name``; BackendError for an unknown name."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    return BACKENDS[name]


def availability(bundle, manifest) -> dict:
    """``{backend name: None if it can run this bundle here, else the reason it cannot}``."""
    from meltok_runtime.errors import MeltokError

    report = {}
    for name in AUTO_ORDER:
        try:
            BACKENDS[name].check_available(bundle, manifest)
            report[name] = None
        except MeltokError as error:
            report[name] = str(error)
    return report


__all__ = ["AUTO_ORDER", "BACKENDS", "BACKEND_CHOICES", "Backend", "OrtCpuBackend", "OrtCudaBackend", "TrtBackend",
           "availability", "backend_class"]
