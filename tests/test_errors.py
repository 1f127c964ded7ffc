"""Every error class of the three packages lives in an errors module and is a ``MeltokError``, so the command
lines print each as one line and callers can catch them all."""
import importlib
import inspect
import pkgutil

import pytest

from meltok_runtime.errors import MeltokError

# The token-dataset errors move into an errors module on a parallel branch; drop this once it is merged.
ELSEWHERE = ("meltok_runtime.dataset",)


def _modules(package_name: str):
    package = importlib.import_module(package_name)
    yield package
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
        if not info.name.startswith(ELSEWHERE):
            yield importlib.import_module(info.name)


@pytest.mark.parametrize("package", ["meltok_runtime", "meltok", "meltok_export"])
def test_error_classes_live_in_errors_modules_and_are_meltok_errors(package):
    misplaced = []
    for module in _modules(package):
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                if not module.__name__.endswith(".errors") or not issubclass(value, MeltokError):
                    misplaced.append(f"{module.__name__}.{name}")
    assert misplaced == []
