"""What this machine has for running bundles: a plain dict, gathered without starting any session.

Python and numpy; ONNX Runtime and its execution providers; the NVIDIA driver (CUDA version it
supports, GPUs with their compute capability, through ``libcuda``); the CUDA runtime of cuda-python;
TensorRT (``full``: the builder's package, ``lean``: ``tensorrt_lean`` only, or ``none``); on a Jetson,
the L4T release (``/etc/nv_tegra_release``), the board (``/proc/device-tree/model``) and the power
mode (``nvpmodel -q``). ``root`` and ``nvpmodel`` exist for tests.
"""
from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np

from meltok_runtime.backends import cuda
from meltok_runtime.errors import MeltokError


def _onnxruntime() -> dict:
    from meltok_runtime.backends.ort import import_onnxruntime, stdout_to_stderr

    try:
        with stdout_to_stderr():
            ort = import_onnxruntime()
            return {"version": ort.__version__, "providers": list(ort.get_available_providers())}
    except MeltokError as error:
        return {"version": None, "providers": [], "error": str(error)}


def _cuda_runtime() -> dict:
    try:
        cudart = cuda.import_cudart()
        version = cuda.cuda_call(cudart, cudart.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
        return {"cuda_python": True, "version": f"{int(version) // 1000}.{int(version) % 1000 // 10}"}
    except MeltokError as error:
        return {"cuda_python": False, "version": None, "error": str(error)}
    except AttributeError:  # bindings without cudaRuntimeGetVersion
        return {"cuda_python": True, "version": None}


def _tensorrt() -> dict:
    from meltok_runtime.backends.trt import import_tensorrt

    try:
        module, lean = import_tensorrt()
    except MeltokError:
        return {"kind": "none", "version": None}
    return {"kind": "lean" if lean else "full", "version": module.__version__}


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().replace(b"\x00", b"").decode(errors="replace").strip() or None
    except OSError:
        return None


def jetson(root: Path = Path("/"), nvpmodel: str | None = "nvpmodel") -> dict | None:
    """``{"l4t", "model", "power_mode"}`` on a Jetson (``/etc/nv_tegra_release`` exists), else None."""
    release = _read(root / "etc" / "nv_tegra_release")
    if release is None:
        return None
    power = None
    command = shutil.which(nvpmodel) if nvpmodel else None
    if command:
        try:
            result = subprocess.run([command, "-q"], capture_output=True, text=True, timeout=10)
            power = " ".join(result.stdout.split()) or None
        except (OSError, subprocess.SubprocessError):
            power = None
    return {"l4t": release.splitlines()[0], "model": _read(root / "proc" / "device-tree" / "model"),
            "power_mode": power}


def describe_machine(root: Path = Path("/"), nvpmodel: str | None = "nvpmodel") -> dict:
    """Everything above as one JSON-ready dict."""
    return {"python": platform.python_version(), "platform": f"{platform.system()} {platform.machine()}",
            "numpy": np.__version__, "onnxruntime": _onnxruntime(), "nvidia_driver": cuda.driver_description(),
            "cuda_runtime": _cuda_runtime(), "tensorrt": _tensorrt(), "jetson": jetson(root, nvpmodel)}
