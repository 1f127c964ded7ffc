"""CUDA from Python, for the GPU backends: the runtime API of ``cuda-python`` and a driver probe.

- ``import_cudart()``: ``cuda.bindings.runtime`` (cuda-python >= 12.6, cuda-bindings 13) or the older
  ``cuda.cudart``; ``cuda_call`` unpacks its ``(error, *values)`` tuples and names the error
  (``cudaGetErrorName``), so an old driver reads ``cudaErrorInsufficientDriver``, not "no GPU".
- ``driver_device_count()``: the number of GPUs the NVIDIA driver sees, asked of ``libcuda`` itself
  through ``ctypes`` (no Python package needed): how ``ort-cuda`` confirms that a device exists.
"""
from __future__ import annotations

import ctypes
import sys

from meltok_runtime.errors import BackendError
from meltok_runtime.optional import import_optional

CUDA_INSTALL = "pip install -e '.[trt]' (cuda-python comes with it)"
NO_DEVICE = ("cudaErrorNoDevice", "CUDA_ERROR_NO_DEVICE")
CU_COMPUTE_CAPABILITY_MAJOR, CU_COMPUTE_CAPABILITY_MINOR = 75, 76  # CUdevice_attribute values
OLD_DRIVER = ("cudaErrorInsufficientDriver", "CUDA_ERROR_INSUFFICIENT_DRIVER", "cudaErrorCompatNotSupportedOnDevice")


def import_cudart():
    """The CUDA runtime bindings of cuda-python (new layout first)."""
    try:
        return import_optional("cuda.bindings.runtime", install=CUDA_INSTALL, purpose="TensorRT on a GPU")
    except BackendError:
        return import_optional("cuda.cudart", install=CUDA_INSTALL, purpose="TensorRT on a GPU")


def error_name(cudart, error) -> str:
    """``cudaErrorMemoryAllocation`` for an error code (its repr where the bindings cannot name it)."""
    try:
        status, name = cudart.cudaGetErrorName(error)
        if status == cudart.cudaError_t.cudaSuccess:
            return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - naming the error must never hide it
        pass
    return getattr(error, "name", repr(error))


def cuda_error_advice(name: str) -> str:
    if name in NO_DEVICE:
        return "no NVIDIA GPU is visible (check CUDA_VISIBLE_DEVICES and `nvidia-smi`)"
    if name in OLD_DRIVER:
        return "the NVIDIA driver is older than this CUDA version needs: update the driver"
    return "check the NVIDIA driver and GPU (`nvidia-smi`)"


def cuda_call(cudart, result, what: str):
    """Unpack a cuda-python ``(error, *values)`` tuple of the call ``what``; BackendError naming the error."""
    error, values = result[0], result[1:]
    if error != cudart.cudaError_t.cudaSuccess:
        name = error_name(cudart, error)
        raise BackendError(f"CUDA {what} failed with {name}: {cuda_error_advice(name)}")
    return values[0] if len(values) == 1 else (values or None)


def device_properties(cudart, device: int) -> tuple[str, str]:
    """``(compute capability "9.0", device name)`` of CUDA device ``device``."""
    props = cuda_call(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\x00", 1)[0].decode(errors="replace")
    return f"{props.major}.{props.minor}", str(name)


def _load_driver():
    """``libcuda`` (``nvcuda.dll`` on Windows) or None where no NVIDIA driver is installed."""
    try:
        return ctypes.WinDLL("nvcuda.dll") if sys.platform == "win32" else ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None


def driver_device_count() -> int:
    """GPUs the NVIDIA driver sees; BackendError naming the driver's error where it cannot say."""
    driver = _load_driver()
    if driver is None:
        raise BackendError("no NVIDIA driver is installed here (libcuda not found), so CUDA cannot run")
    status = driver.cuInit(0)
    count = ctypes.c_int(0)
    if status == 0:
        status = driver.cuDeviceGetCount(ctypes.byref(count))
    if status != 0:
        name = ctypes.c_char_p()
        known = driver.cuGetErrorName(status, ctypes.byref(name)) == 0 and name.value
        label = name.value.decode() if known else f"CUDA driver error {status}"
        if label in NO_DEVICE:
            return 0
        raise BackendError(f"the NVIDIA driver failed with {label}: {cuda_error_advice(label)}")
    return count.value


def driver_description() -> dict:
    """What the NVIDIA driver says, asked of ``libcuda`` through ctypes: ``{"driver": "12.6" or None,
    "devices": [{"name", "compute_capability"}], "error": None or why it cannot say}``."""
    driver = _load_driver()
    if driver is None:
        return {"driver": None, "devices": [], "error": "no NVIDIA driver is installed here (libcuda not found)"}
    version = ctypes.c_int(0)
    release = f"{version.value // 1000}.{version.value % 1000 // 10}" if driver.cuDriverGetVersion(
        ctypes.byref(version)) == 0 and version.value else None
    try:
        count = driver_device_count()
    except BackendError as error:
        return {"driver": release, "devices": [], "error": str(error)}
    devices = []
    for index in range(count):
        handle, name = ctypes.c_int(0), ctypes.create_string_buffer(256)
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        if driver.cuDeviceGet(ctypes.byref(handle), index) != 0 or driver.cuDeviceGetName(name, 256, handle) != 0:
            continue
        driver.cuDeviceGetAttribute(ctypes.byref(major), CU_COMPUTE_CAPABILITY_MAJOR, handle)
        driver.cuDeviceGetAttribute(ctypes.byref(minor), CU_COMPUTE_CAPABILITY_MINOR, handle)
        devices.append({"name": name.value.decode(errors="replace"), "compute_capability": f"{major.value}.{minor.value}"})
    return {"driver": release, "devices": devices, "error": None if count else "the NVIDIA driver sees no GPU"}