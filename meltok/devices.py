"""Torch devices named by users (``--device``), checked against this machine before any work."""
from __future__ import annotations

import torch

from .errors import DeviceError


def available_devices() -> list[str]:
    """The device names that work here: ``cpu``, then ``cuda:0``... and ``mps`` where present."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names


def torch_device(name: str | torch.device | None) -> torch.device:
    """``name`` as a torch.device that exists here; None means CUDA when available, else the CPU.

    Raises DeviceError naming the devices that are available (one line, no traceback in the CLIs).
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceError(f"--device {str(name)!r} is not a torch device; available here: "
                          f"{', '.join(available_devices())}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {str(name)!r}: no CUDA GPU is usable here (torch {torch.__version__}"
                              f"{'' if torch.version.cuda else ', built without CUDA'}); available here: "
                              f"{', '.join(available_devices())}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {str(name)!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s); "
                              f"available here: {', '.join(available_devices())}")
        return device
    if str(device.type) not in available_devices():
        raise DeviceError(f"--device {str(name)!r} is not available on this machine; available here: "
                          f"{', '.join(available_devices())}")
    return device
