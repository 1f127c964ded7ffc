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


@pytest.mark.parametrize("value", ["meltok-edge:e219538591c9", [""], [3]])
def test_accepts_tokens_of_must_be_a_list_of_model_ids(bundle_copy, value):
    path = bundle_copy / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "accepts_tokens_of": value}))
    with pytest.raises(BundleError, match="accepts_tokens_of .* expected a list of model ids"):
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


def test_the_runtime_windows_long_inputs_as_the_manifest_says(tiny_bundle, bundle_copy, real_clips):
    """An exported manifest records the window layout; the runtime reads it (window, context and decoding
    cross-fade), explicit settings win, and a manifest without it (older bundles) gets the defaults."""
    import numpy as np

    from meltok_runtime.windowing import DEFAULT_CONTEXT_SECONDS, DEFAULT_WINDOW_SECONDS, decode_windowed

    written = json.loads((tiny_bundle / "manifest.json").read_text())["windowing"]
    assert written == {"window_seconds": DEFAULT_WINDOW_SECONDS, "context_seconds": DEFAULT_CONTEXT_SECONDS,
                       "fade_seconds": DEFAULT_CONTEXT_SECONDS}
    with Codec.open(tiny_bundle, backend="ort-cpu") as default:
        assert default.windows == (258, 22)  # 12 s and 1 s of 2048-sample columns at 44.1 kHz
        defaults = default.windows
    path = bundle_copy / "manifest.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "windowing": {"window_seconds": 2.0, "context_seconds": 0.25,
                                                      "fade_seconds": 0.1}}))
    audio = real_clips["music"][: 44100 * 6]
    with Codec.open(bundle_copy, backend="ort-cpu") as short, Codec.open(tiny_bundle, backend="ort-cpu") as whole:
        assert short.windows == (43, 5) and short.fade_columns == 0.1 * 44100 / 2048
        with Codec.open(bundle_copy, backend="ort-cpu", window_seconds=3.0, context_seconds=0.5) as explicit:
            assert explicit.windows == (65, 11)
        tokens = whole.encode(audio)
        expected = decode_windowed(tokens, whole._decode_graph, window_columns=43, context_columns=5, hop=256,
                                   compression=8, fade_columns=0.1 * 44100 / 2048)
        np.testing.assert_array_equal(short.decode(tokens), expected)
        assert short.decode_windows(tokens.shape[-1]) > 1
    path.write_text(json.dumps({key: value for key, value in data.items() if key != "windowing"}))
    with Codec.open(bundle_copy, backend="ort-cpu") as old:
        assert old.windows == defaults and old.fade_columns is None
    for bad, match in [({"window_seconds": -1}, "window_seconds = -1"), ({"hop": 1.0}, "unknown keys"),
                       ({"fade_seconds": "1"}, "fade_seconds = '1'")]:
        path.write_text(json.dumps({**data, "windowing": bad}))
        with pytest.raises(BundleError, match=match):
            Codec.open(bundle_copy, backend="ort-cpu")
