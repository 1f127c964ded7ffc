"""Every exception class of ``meltok_runtime`` is a ``MeltokError`` defined in an errors module."""
import ast
import importlib
import inspect
from pathlib import Path

import meltok_runtime
from meltok_runtime.errors import MeltokError

RUNTIME = Path(meltok_runtime.__file__).parent


def _modules():
    for path in sorted(RUNTIME.rglob("*.py")):
        parts = path.relative_to(RUNTIME).with_suffix("").parts
        yield path, ".".join(("meltok_runtime", *(parts[:-1] if parts[-1] == "__init__" else parts)))


def test_every_exception_class_is_a_meltok_error_from_an_errors_module():
    found = []
    for path, name in _modules():
        module = importlib.import_module(name)
        top_level = {node.name for node in ast.parse(path.read_text()).body if isinstance(node, ast.ClassDef)}
        for class_name in top_level:
            cls = getattr(module, class_name)
            if inspect.isclass(cls) and issubclass(cls, BaseException):
                found.append(cls)
                assert issubclass(cls, MeltokError), f"{name}.{class_name} is not a MeltokError"
                assert name.rsplit(".", 1)[-1] == "errors", f"{name}.{class_name} is defined outside an errors module"
        for node in ast.walk(ast.parse(path.read_text())):  # classes inside functions: none may be errors
            if isinstance(node, ast.FunctionDef):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ClassDef):
                        bases = [ast.unparse(base) for base in inner.bases]
                        assert not any("Error" in base or "Exception" in base for base in bases), \
                            f"{name}: class {inner.name} inside a function subclasses {bases}"
    names = {cls.__name__ for cls in found}
    assert {"SourceError", "DatasetError", "ClusterError", "ItemError", "WorkerError"} <= names


def test_the_dataset_errors_are_imported_from_the_errors_module():
    from meltok_runtime import errors
    from meltok_runtime.dataset import DatasetError, items, local_job, ray_job, reader, sources

    assert DatasetError is errors.DatasetError and reader.DatasetError is errors.DatasetError
    assert sources.SourceError is errors.SourceError and ray_job.ClusterError is errors.ClusterError
    assert items.ItemError is errors.ItemError and local_job.ItemError is errors.ItemError
    assert items.WorkerError is errors.WorkerError
