"""The one helper for optional packages: the real module, or one typed error naming the install command."""
import numpy
import pytest

from meltok_runtime.errors import BackendError, MeltokError, MissingDependencyError
from meltok_runtime.optional import import_optional


def test_returns_the_module_when_installed():
    assert import_optional("numpy", install="pip install numpy", purpose="arrays") is numpy


def test_missing_package_names_the_purpose_and_the_install_command():
    with pytest.raises(MissingDependencyError) as caught:
        import_optional("meltok_no_such_package.sub", install="pip install -e '.[export]'", purpose="ONNX export")
    message = str(caught.value)
    assert "ONNX export" in message and "'meltok_no_such_package'" in message
    assert message.endswith("pip install -e '.[export]'")
    assert isinstance(caught.value, MeltokError) and isinstance(caught.value, BackendError)
    assert isinstance(caught.value, ImportError)
