"""The exported graphs in ONNX Runtime: dynamic batch and length, metadata, the official-tiny reference
reproduced without torch, and fp16 token agreement on real audio."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from meltok_export.contract import FP16_TOKEN_FLOOR, verify_audio
from meltok_export.verify import verify_graphs
from meltok_runtime.manifest import load_manifest
from meltok_runtime.lengths import decoded_length, padded_length, token_columns


def _sessions(folder):
    return {name: onnxruntime.InferenceSession(str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"])
            for name in ("encoder", "decoder")}


@pytest.mark.parametrize("batch,samples", [(1, 12345), (3, 30001), (2, padded_length(40000, 256, 8)), (1, 65538)])
def test_dynamic_batch_and_length_match_torch(exported, tiny_model, batch, samples):
    sessions = _sessions(exported("tiny", "fp32"))
    audio = (0.1 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(samples))).numpy()
    with torch.inference_mode():
        expected = tiny_model.tokenize(torch.from_numpy(audio))
        expected_audio = tiny_model.detokenize(expected).numpy()
    tokens = sessions["encoder"].run(None, {"audio": audio})[0]
    columns = token_columns(samples, 256, 8)
    assert tokens.dtype == np.int32 and tokens.shape == (batch, 12, columns)
    np.testing.assert_array_equal(tokens, expected.numpy())
    decoded = sessions["decoder"].run(None, {"tokens": expected.numpy().astype(np.int32)})[0]
    assert decoded.dtype == np.float32 and decoded.shape == (batch, decoded_length(columns, 256, 8))
    np.testing.assert_allclose(decoded, expected_audio, atol=1e-5)


def test_fp16_graphs_take_any_batch_and_length(exported):
    sessions = _sessions(exported("tiny", "fp16"))
    audio = 0.1 * np.random.default_rng(0).standard_normal((3, 20001)).astype(np.float32)
    tokens = sessions["encoder"].run(None, {"audio": audio})[0]
    assert tokens.dtype == np.int32 and tokens.shape == (3, 12, token_columns(20001, 256, 8))
    decoded = sessions["decoder"].run(None, {"tokens": tokens})[0]
    assert decoded.dtype == np.float32 and decoded.shape == (3, decoded_length(tokens.shape[-1], 256, 8))
    assert np.isfinite(decoded).all()


def test_metadata_props(exported, official_model):
    for graph in ("encoder", "decoder"):
        model = onnx.load(str(exported("official", "fp16") / f"{graph}.onnx"))
        props = {p.key: p.value for p in model.metadata_props}
        assert props["meltok.graph"] == graph and props["meltok.precision"] == "fp16"
        assert props["meltok.model_id"] == official_model.model_id
        assert props["meltok.model_name"] == official_model.config.name
        assert len(props["meltok.model_sha256"]) == 64
        assert (props["meltok.sample_rate"], props["meltok.hop_length"], props["meltok.n_mels"]) == ("44100", "256", "96")
        assert (props["meltok.token_rows"], props["meltok.codebook_size"], props["meltok.compression"]) == ("12", "512", "8")
        assert props["meltok.bundle_format_version"] == "1"
        inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
        assert inputs == ({"audio": ["batch", "samples"]} if graph == "encoder" else {"tokens": ["batch", 12, "columns"]})


ORT_WITHOUT_TORCH = textwrap.dedent("""
    import json, sys
    sys.modules["torch"] = None  # any import of torch now fails
    import numpy as np
    import onnxruntime
    folder, io_path = sys.argv[1], sys.argv[2]
    io = np.load(io_path)
    run = lambda name, feeds: onnxruntime.InferenceSession(f"{folder}/{name}.onnx",
                                                           providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    tokens = run("encoder", {"audio": io["audio"]})
    audio = run("decoder", {"tokens": io["tokens"].astype(np.int32)})
    print(json.dumps({"tokens_equal": bool(np.array_equal(tokens, io["tokens"])), "tokens_dtype": str(tokens.dtype),
                      "audio_shape": list(audio.shape), "audio_error": float(np.abs(audio - io["audio_hat"]).max()),
                      "torch_loaded": "torch" in sys.modules and sys.modules["torch"] is not None}))
""")


def test_official_tiny_reference_in_onnx_runtime_without_torch(exported, official_tiny_dir, golden_io):
    folder = exported("official", "fp32")
    result = subprocess.run([sys.executable, "-c", ORT_WITHOUT_TORCH, str(folder), str(official_tiny_dir / "io.npz")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["tokens_equal"] and figures["tokens_dtype"] == "int32"
    assert figures["audio_shape"] == list(golden_io["audio_hat"].shape)
    assert figures["audio_error"] < 1e-3
    assert not figures["torch_loaded"]


def test_verification_audio_is_real_and_shipped():
    clip = verify_audio()
    assert clip.dtype == np.float32 and clip.ndim == 1 and clip.shape[0] >= 4 * 44100
    assert 0.05 < np.abs(clip).max() <= 1.0


def test_fp32_graphs_reproduce_the_model_on_real_audio(exported, official_model):
    report = verify_graphs(official_model, exported("official", "fp32"), load_manifest(exported("official", "fp32")),
                           max_seconds=3.0)
    assert report["passed"], report["failures"]
    assert report["token_agreement"] == 1.0
    assert report["waveform_snr_db"] > 80
    assert {c["name"] for c in report["cases"]} == {"padded-clip", "odd-length", "batch-2"}
    assert any(c["samples"] % 2 for c in report["cases"]) and any(c["batch"] == 2 for c in report["cases"])


@pytest.mark.parametrize("name", ["official", "tiny"])
def test_fp16_token_agreement_on_real_audio(exported, models, name):
    folder = exported(name, "fp16")
    report = verify_graphs(models[name], folder, load_manifest(folder), max_seconds=3.0)
    print(f"{name} fp16: token agreement {report['token_agreement']:.4f}, waveform SNR "
          f"{report['waveform_snr_db']:.1f} dB, mel error {report['mel_mean_error']:.2g}")
    assert report["passed"], report["failures"]
    assert report["token_agreement"] >= FP16_TOKEN_FLOOR
