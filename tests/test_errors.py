"""Every error class of the three packages lives in an errors module and is a ``MeltokError``, so the command
lines print each as one line and callers can catch them all."""
import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

from meltok_runtime.errors import MeltokError


def _modules(package_name: str):
    """``(name, module or None, source path)`` of every module; None where a module imports a package that
    exists only in its host (Triton's Python backend)."""
    package = importlib.import_module(package_name)
    yield package_name, package, package.__file__
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
        path = info.module_finder.find_spec(info.name.rsplit(".", 1)[1]).origin
        try:
            yield info.name, importlib.import_module(info.name), path
        except ModuleNotFoundError as error:
            if error.name.split(".")[0] in ("meltok", "meltok_runtime", "meltok_export"):
                raise
            yield info.name, None, path


def _defined_errors(module, path) -> list[str]:
    """Names of the exception classes a module defines that are not ``MeltokError``s in an errors module."""
    if module is None:  # not importable here: exception-like bases, read from the source
        tree = ast.parse(Path(path).read_text())
        return [node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
                and any(ast.unparse(base).endswith(("Error", "Exception")) for base in node.bases)]
    found = []
    for name, value in vars(module).items():
        if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__:
            if not module.__name__.endswith(".errors") or not issubclass(value, MeltokError):
                found.append(name)
    return found


@pytest.mark.parametrize("package", ["meltok_runtime", "meltok", "meltok_export"])
def test_error_classes_live_in_errors_modules_and_are_meltok_errors(package):
    misplaced = [f"{name}.{error}" for name, module, path in _modules(package)
                 for error in _defined_errors(module, path) if module is not None or not name.endswith(".errors")]
    assert misplaced == []
