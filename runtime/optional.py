"""Optional dependencies, imported lazily with one message that says how to install them.

Every module that needs a package outside the base install (torch, onnx, tensorrt, ray, pyarrow,
matplotlib, ...) calls ``import_optional`` at the point of use, never at import time, so every
module imports on the lean runtime install.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from meltok_runtime.errors import MissingDependencyError


def import_optional(module: str, *, install: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise ``MissingDependencyError`` naming ``install``.

    ``install`` is the command that fixes it (e.g. ``"pip install -e '.[export]'"``) and
    ``purpose`` what the package is needed for (e.g. ``"ONNX export"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"{purpose} needs the Python package {module.split('.')[0]!r}, which is not importable here "
            f"({error}); install it with: {install}") from None
