"""Peak memory of a process: resident set size, and device memory sampled with NVML (``nvidia-ml-py``, optional).

Used by ``meltok-rt bench`` and by ``benchmarks.speed``'s workers."""
from __future__ import annotations

import os
import resource
import sys
import threading
from pathlib import Path


def _proc_status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def current_rss_mb() -> float | None:
    return _proc_status_mb("VmRSS")


def peak_rss_mb() -> tuple[float, str]:
    """Peak resident set size of this process and how it was read.

    ``VmHWM`` of ``/proc/self/status`` first: it belongs to this process's own address space, while
    ``ru_maxrss`` survives fork + exec (a worker started by a 500 MB parent would report 500 MB).
    ``resource.getrusage`` is the fallback where there is no ``/proc`` (KiB on Linux, bytes on macOS).
    """
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm, "/proc/self/status VmHWM"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024), "getrusage ru_maxrss"


class NvmlSampler:
    """Peak device memory of this process, sampled with NVML every 5 ms (``nvidia-ml-py``); inert without it.

    Reads the process's own entry of ``nvmlDeviceGetComputeRunningProcesses``; where a container hides
    process ids from NVML, the device's used memory above its level at the start instead (then other
    processes on the same GPU count too: ``method`` says which).
    """

    def __init__(self):
        self.process_peak = self.device_peak = None
        self.error, self._stop = None, threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._baseline = pynvml.nvmlDeviceGetMemoryInfo(self._handle).used
        except Exception as error:  # noqa: BLE001 - NVML is optional
            self._nvml = None
            self.error = f"not measured: no NVML ({type(error).__name__}); pip install nvidia-ml-py"
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        pid = os.getpid()
        for process in self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
            if process.pid == pid and process.usedGpuMemory is not None:
                self.process_peak = max(self.process_peak or 0.0, process.usedGpuMemory / 2 ** 20)
        used = (self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used - self._baseline) / 2 ** 20
        self.device_peak = max(self.device_peak or 0.0, used)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except Exception as error:  # noqa: BLE001
                self.error = f"NVML query failed: {error}"
                return
            self._stop.wait(0.005)

    @property
    def peak(self) -> tuple[float | None, str]:
        if self.process_peak is not None:
            return self.process_peak, "NVML memory of this process"
        if self.device_peak is not None:
            return self.device_peak, "NVML device memory used above the start (other processes count too)"
        return None, self.error or "not measured"

    def __enter__(self):
        if self._nvml is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._nvml is not None:
            try:
                self._sample()
            except Exception:  # noqa: BLE001
                pass
