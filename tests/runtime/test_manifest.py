"""Bundle manifests: version checks, and each graph hashed once per open."""
import hashlib
import json

import pytest
from click.testing import CliRunner

from meltok_runtime import Codec, manifest as manifest_module
from meltok_runtime.backends import ort
from meltok_runtime.cli.main import main
from meltok_runtime.errors import BundleError


@pytest.mark.parametrize("version,match", [(0, "from 1 to"), (-3, "from 1 to"), (True, "from 1 to"),
                                           ("1", "from 1 to"), (99, "upgrade meltok")])
def test_format_version_outside_the_known_range_is_refused(bundle_copy, version, match):
    path = bundle_copy / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": version}))
    with pytest.raises(BundleError, match=match):
        Codec.open(bundle_copy, backend="ort-cpu")


@pytest.fixture
def hashed(monkeypatch):
    """The number of graph hashes: the manifest's file hashes and the ONNX Runtime backend's byte hashes."""
    calls = []
    file_sha256, sha256 = manifest_module.file_sha256, hashlib.sha256

    def count_file(path):
        calls.append(path)
        return file_sha256(path)

    def count_bytes(data=b""):
        calls.append(len(data))
        return sha256(data)

    monkeypatch.setattr(manifest_module, "file_sha256", count_file)
    monkeypatch.setattr(ort, "hashlib", type("counted", (), {"sha256": staticmethod(count_bytes)}))
    return calls


def test_each_graph_is_hashed_once_per_open(tiny_bundle, hashed):
    with Codec.open(tiny_bundle, backend="ort-cpu"):
        pass
    assert len(hashed) == 2
    hashed.clear()
    result = CliRunner().invoke(main, ["info", str(tiny_bundle), "--backend", "ort-cpu"])
    assert result.exit_code == 0, result.output
    assert len(hashed) == 2
