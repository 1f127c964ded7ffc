"""CUDA on numpy: the runtime API of cuda-python (``FakeCudart``) and the driver probe (``FakeDriver``)."""
from __future__ import annotations

import ctypes
import enum
import itertools
from types import SimpleNamespace

import numpy as np


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
        self.pinned: dict[int, np.ndarray] = {}  # page-locked host allocations, by address
        self.pageable_async_copies = 0  # asynchronous copies from or to ordinary (pageable) host memory
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

    def cudaRuntimeGetVersion(self):  # noqa: N802
        return self._result(12060)

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

    def cudaMallocHost(self, size):  # noqa: N802 - CUDA's names
        self.calls.append("cudaMallocHost")
        buffer = np.full(int(size), 0xCD, np.uint8)
        self.pinned[buffer.ctypes.data] = buffer
        return self._result(buffer.ctypes.data)

    def cudaFreeHost(self, address):  # noqa: N802
        if self.pinned.pop(address, None) is None:
            raise FakeCudaError(f"cudaFreeHost of {address:#x}, which is not a page-locked allocation")
        return self._result()

    def _is_pinned(self, address: int, size: int) -> bool:
        return any(start <= address and address + size <= start + buffer.size for start, buffer in self.pinned.items())

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
        host = src if kind is MemcpyKind.cudaMemcpyHostToDevice else dst
        self.pageable_async_copies += not self._is_pinned(int(host), int(size))
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


class FakeDriver:
    """``libcuda`` through ctypes: ``cuInit``, ``cuDeviceGetCount`` and ``cuGetErrorName``."""

    NAMES = {100: b"CUDA_ERROR_NO_DEVICE", 35: b"CUDA_ERROR_INSUFFICIENT_DRIVER"}

    def __init__(self, count: int = 1, status: int = 0, version: int = 12060,
                 devices=(("NVIDIA H100 80GB HBM3", 9, 0),)):
        self.count, self.status, self.version, self.devices = count, status, version, list(devices)

    def cuDriverGetVersion(self, version):  # noqa: N802
        version._obj.value = self.version
        return 0

    def cuDeviceGet(self, handle, index):  # noqa: N802
        handle._obj.value = index
        return 0

    def cuDeviceGetName(self, buffer, size, handle):  # noqa: N802
        buffer.value = self.devices[handle.value][0].encode()
        return 0

    def cuDeviceGetAttribute(self, value, attribute, handle):  # noqa: N802
        value._obj.value = self.devices[handle.value][{75: 1, 76: 2}[attribute]]
        return 0

    def cuInit(self, flags):  # noqa: N802 - the driver's names
        return self.status

    def cuDeviceGetCount(self, count):  # noqa: N802
        count._obj.value = self.count
        return 0

    def cuGetErrorName(self, status, name):  # noqa: N802
        name._obj.value = self.NAMES[status]
        return 0
