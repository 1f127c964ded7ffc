"""Package attributes that import their module on first use (keeps ``import meltok_runtime`` and
``import meltok`` light: no onnxruntime, soundfile or torch until a name that needs them is used)."""
import importlib


def lazy_attributes(package: str, table: dict, namespace: dict):
    """``(__getattr__, __dir__)`` for ``package``: ``table`` maps each lazy name to the submodule that
    defines it; a loaded value is stored in ``namespace`` (the package's ``globals()``)."""

    def getattr_(name):
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{table[name]}"), name)
        namespace[name] = value
        return value

    def dir_():
        return sorted(set(namespace) | set(table))

    return getattr_, dir_
