"""Bundles: manifest contents, atomic writes (a failed export leaves nothing), verification reruns,
and the meltok-export command line."""
import json
import sys

import pytest
from click.testing import CliRunner

from meltok_export import bundle as bundle_module
from meltok_export.bundle import export_bundle
from meltok_export.contract import TOLERANCES
from meltok_export.errors import ExportOptionError, VerificationError
from meltok_export.cli import main
from meltok_export.onnx_export import model_sha256
from meltok_export.verify import verify_bundle
from meltok_runtime.errors import BackendError, BundleError, ModelMismatchError
from meltok_runtime.manifest import file_sha256, load_manifest


def _leftovers(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}."))


def test_manifest_contents(tiny_bundle, tiny_model):
    out, manifest = tiny_bundle
    assert load_manifest(out) == manifest
    assert sorted(p.name for p in out.iterdir()) == ["decoder.onnx", "encoder.onnx", "manifest.json",
                                                     "tensorrt-commands.json", "verification.npz"]
    assert manifest.verification["file"] == "verification.npz" and manifest.verification["samples"] == 2 * 44100
    assert manifest.verification["sha256"] == file_sha256(out / "verification.npz")
    assert (out / "verification.npz").stat().st_size < 200_000  # small: 2 s of 16-bit audio and its tokens
    assert set(manifest.float32_nodes) == {"encoder", "decoder"} and all(manifest.float32_nodes.values())
    assert manifest.model_id == tiny_model.model_id and manifest.model_name == "meltok-tiny"
    assert manifest.model_sha256 == model_sha256(tiny_model)
    assert (manifest.sample_rate, manifest.hop_length, manifest.n_mels, manifest.token_rows,
            manifest.codebook_size, manifest.compression, manifest.opset) == (44100, 256, 96, 12, 1024, 8, 17)
    for name, graph in manifest.graphs.items():
        assert graph.file == f"{name}.onnx" and graph.sha256 == file_sha256(out / graph.file)
        assert graph.precision == "fp32"
    encoder, decoder = manifest.graphs["encoder"], manifest.graphs["decoder"]
    assert [(s.name, s.dtype, s.shape) for s in encoder.inputs] == [("audio", "float32", ("batch", "samples"))]
    assert [(s.name, s.dtype, s.shape) for s in encoder.outputs] == [("tokens", "int32", ("batch", 12, "columns"))]
    assert [(s.name, s.dtype, s.shape) for s in decoder.outputs] == [("audio", "float32", ("batch", "out_samples"))]
    assert manifest.engines == ()
    assert manifest.limits["max_batch"] == 4 and manifest.limits["max_seconds"] == 12.0
    assert manifest.limits["max_samples"] >= 12 * 44100 and manifest.limits["max_columns"] > 0
    figures = manifest.tolerances["onnxruntime"]
    assert figures["token_agreement"] == 1.0 and figures["token_mismatches_beyond_ties"] == 0
    assert figures["waveform_snr_db"] > 60 and manifest.tolerances["limits"] == TOLERANCES["fp32"]
    for tool in ("meltok", "torch", "onnx", "onnxruntime", "onnxsim", "python"):
        assert manifest.versions[tool]


def test_verify_bundle_reruns_and_checks_the_model(tiny_bundle, tiny_model, official_model):
    out, _ = tiny_bundle
    report = verify_bundle(out, tiny_model, max_seconds=2.0)
    assert report["passed"] and report["tensorrt"] == {"skipped": "the bundle has no TensorRT engines"}
    assert "ort-cuda" in report["ort_cuda"]["skipped"] or "CUDA" in report["ort_cuda"]["skipped"]
    with pytest.raises(ModelMismatchError, match="exported from model"):
        verify_bundle(out, official_model)


def test_corrupt_bundle_is_refused(tiny_bundle, tiny_model, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle[0], copy)
    with open(copy / "decoder.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="does not match the hash"):
        verify_bundle(copy, tiny_model)


def _failing_verification(*args, **kwargs):
    return {"failures": ["ONNX Runtime token_agreement is 0.5 (forced by the test)"], "passed": False}


def test_failed_verification_leaves_no_bundle(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_module, "verify_graphs", _failing_verification)
    with pytest.raises(VerificationError, match="forced by the test"):
        export_bundle(tiny_model, tmp_path / "out", verify_seconds=1.0)
    assert _leftovers(tmp_path, "out") == []


def _partial_export_then(error):
    def export(model, folder, **kwargs):
        (folder / "encoder.onnx").write_bytes(b"half a graph")
        raise error

    return export


def test_failed_export_keeps_the_previous_bundle(tiny_model, tiny_bundle, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle[0], out)
    before = {p.name: file_sha256(p) for p in out.iterdir()}
    monkeypatch.setattr(bundle_module, "export_onnx", _partial_export_then(BundleError("forced by the test")))
    with pytest.raises(BundleError, match="forced by the test"):
        export_bundle(tiny_model, out, precision="fp16", force=True)
    assert {p.name: file_sha256(p) for p in out.iterdir()} == before
    assert _leftovers(tmp_path, "bundle") == ["bundle"]


def test_interrupted_export_leaves_no_bundle(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_module, "export_onnx", _partial_export_then(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        export_bundle(tiny_model, tmp_path / "out")
    assert _leftovers(tmp_path, "out") == []


def _no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` now raises ImportError

    def must_not_run(*args, **kwargs):
        raise AssertionError("export work started although TensorRT is missing")

    monkeypatch.setattr(bundle_module, "export_onnx", must_not_run)


def test_trt_engine_without_tensorrt_fails_fast(tiny_model, tmp_path, monkeypatch):
    _no_tensorrt(monkeypatch)
    with pytest.raises(BackendError, match=r"TensorRT engines cannot be built here: .*JetPack.*pip install -e "
                                           r"'\.\[trt-build\]' --extra-index-url"):
        export_bundle(tiny_model, tmp_path / "out", engine="trt")
    assert _leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("options", [{"engine": "tflite"}, {"precision": "int4"}, {"engine": "trt", "precision": "int8"},
                                     {"max_seconds": 0}, {"opt_seconds": 40.0}, {"max_batch": 0}])
def test_bad_options_are_refused(tiny_model, tmp_path, options):
    with pytest.raises(ExportOptionError):
        export_bundle(tiny_model, tmp_path / "out", **options)
    assert _leftovers(tmp_path, "out") == []


# ------------------------------------------------------------------------------------------- CLI
def test_cli_export_without_subcommand_then_verify(tiny_model_file, tmp_path):
    runner = CliRunner()
    out = tmp_path / "bundle"
    result = runner.invoke(main, [str(tiny_model_file), "-o", str(out), "--precision", "fp16", "--max-seconds", "8",
                                  "--opt-seconds", "4", "--max-batch", "2"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    manifest = load_manifest(out)
    assert manifest.graphs["encoder"].precision == "fp16" and manifest.limits["max_batch"] == 2
    assert manifest.tolerances["onnxruntime"]["token_agreement"] >= TOLERANCES["fp16"]["token_agreement_min"]
    result = runner.invoke(main, ["verify", str(out), "-m", str(tiny_model_file), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["passed"]


def test_cli_trt_without_tensorrt_is_one_line_error(tiny_model_file, tmp_path, monkeypatch):
    _no_tensorrt(monkeypatch)
    out = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["export", str(tiny_model_file), "-o", str(out), "--engine", "trt"])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: TensorRT engines cannot be built here"), result.output
    assert "pip install -e '.[trt-build]' --extra-index-url https://pypi.nvidia.com" in lines[0]
    assert _leftovers(tmp_path, "bundle") == []


def test_cli_errors_are_one_line(tiny_bundle, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, [str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "b")])
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1, result.output
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"not a model")
    result = runner.invoke(main, ["verify", str(tiny_bundle[0]), "-m", str(other)])
    assert result.exit_code != 0 and result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1
    result = runner.invoke(main, ["verify", str(tmp_path / "nothing"), "-m", str(other)])
    assert result.exit_code != 0 and result.output.startswith("Error: ")


@pytest.mark.slow
def test_paper_preset_bundle(tmp_path):
    """The full-size architecture (random weights) exports, fits TensorRT 10 and verifies (about 2 min on CPU)."""
    import torch

    from meltok import MelTok

    torch.manual_seed(0)
    manifest = export_bundle(MelTok.from_config("paper"), tmp_path / "paper", precision="fp16", verify_seconds=3.0)
    figures = manifest.tolerances["onnxruntime"]
    assert figures["token_agreement"] >= TOLERANCES["fp16"]["token_agreement_min"]
    assert manifest.token_rows == 12 and manifest.codebook_size == 8192


def test_annotate_gives_an_older_bundle_the_deployment_data_of_a_new_export(tiny_bundle, tmp_path):
    import dataclasses
    import shutil

    import numpy as np

    out, manifest = tiny_bundle
    old = shutil.copytree(out, tmp_path / "old")
    (old / "verification.npz").unlink()
    (old / "tensorrt-commands.json").unlink()
    dataclasses.replace(manifest, verification={}, float32_nodes={}).write(old)
    result = CliRunner().invoke(main, ["annotate", str(old)])
    assert result.exit_code == 0, result.output
    again = load_manifest(old)
    assert again.float32_nodes == manifest.float32_nodes
    assert {k: v for k, v in again.verification.items() if k != "sha256"} == \
        {k: v for k, v in manifest.verification.items() if k != "sha256"}
    with np.load(old / "verification.npz") as new, np.load(out / "verification.npz") as exported:
        assert np.array_equal(new["tokens"], exported["tokens"]) and np.array_equal(new["audio_pcm16"],
                                                                                      exported["audio_pcm16"])
    assert json.loads((old / "tensorrt-commands.json").read_text()) == \
        json.loads((out / "tensorrt-commands.json").read_text())
