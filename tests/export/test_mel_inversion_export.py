"""A ``mel_inversion`` model (no neural vocoder: the decoder's log-mel -> the runtime's ``MelInverter``)
exports to a bundle whose decoder graph is tokens -> log-mel, verified against torch like every graph; the
runtime decodes it to the audio torch decodes, on real audio, through ONNX Runtime and the Triton model."""
import json
import sys

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from meltok_export.bundle import export_bundle
from meltok_export.cli import main as export_main
from meltok_export.errors import ExportOptionError
from meltok_export.islands import float32_islands
from meltok_export.op_support import check_tensorrt_ops
from meltok_export.verify import verify_bundle
from meltok_runtime import Codec
from meltok_runtime.manifest import load_manifest


def test_decoder_graph_is_tokens_to_log_mel_and_verified(tiny_mel_inversion):
    model, _, bundle = tiny_mel_inversion
    manifest = load_manifest(bundle)
    assert manifest.model_id == model.model_id and manifest.model_name == "meltok-tiny-mel-inversion"
    assert manifest.decoder_output == "log_mel" and manifest.mel_inversion["nnls_iterations"] >= 1
    assert {key: manifest.mel_inversion[key] for key in ("sample_rate", "n_fft", "hop_length", "n_mels")} == {
        "sample_rate": 44100, "n_fft": 1024, "hop_length": 256, "n_mels": 96}
    figures = manifest.tolerances["onnxruntime"]  # the graph's log-mel against MelTok.decode_features
    assert figures["token_agreement"] == 1.0 and figures["waveform_max_error"] < 1e-3
    assert figures["mel_max_error"] < 1e-3
    graph = onnx.load(str(bundle / "decoder.onnx"))
    assert [output.name for output in graph.graph.output] == ["log_mel"]
    assert check_tensorrt_ops(graph) == []  # what TensorRT and ORT-CUDA take: the smaller graph, unchanged
    assert {prop.key: prop.value for prop in graph.metadata_props}["meltok.decoder_output"] == "log_mel"
    assert {node.op_type for node in float32_islands(graph, "decoder")["mel-out"]} >= {"Mul", "Clip"}
    assert set(manifest.float32_nodes["decoder"]) >= {node.name for node in float32_islands(graph, "decoder")["mel-out"]}
    report = verify_bundle(bundle, model, max_seconds=1.0)  # `meltok-export verify` reruns it
    assert report["passed"] and report["mel_max_error"] < 1e-3


def test_runtime_decodes_real_audio_as_torch_does(tiny_mel_inversion, real_clips):
    """Same tokens, and the same audio to float tolerance (the same MelInverter on both sides, fed the graph's
    and torch's log-mels)."""
    model, _, bundle = tiny_mel_inversion
    audio = real_clips["music"][:2 * 44100]
    with Codec.open(bundle, backend="ort-cpu", threads=1) as codec:
        tokens = codec.encode(audio)
        decoded = codec.decode(tokens, num_samples=audio.size)
        graph_mel = codec._decode_graph(tokens)
    np.testing.assert_array_equal(tokens, model.encode(audio))
    expected = model.decode(tokens, num_samples=audio.size)
    with torch.no_grad():
        torch_mel = model._decode_graph(tokens)
    np.testing.assert_allclose(graph_mel, torch_mel, rtol=0, atol=1e-4)
    peak = float(np.abs(expected).max())
    assert decoded.shape == expected.shape == (1, audio.size) and peak > 0
    error = decoded.astype(np.float64) - expected
    snr = 10 * np.log10(np.sum(expected.astype(np.float64) ** 2) / np.sum(error ** 2))
    assert snr > 60, f"runtime vs torch: {snr:.1f} dB"
    with torch.no_grad():  # torch's own audio is the inverter on its decoder's log-mel
        direct = model.detokenize(torch.from_numpy(tokens)).numpy()
    np.testing.assert_array_equal(direct, model.mel_inverter(torch_mel)[0])


def test_fp16_export_keeps_the_mel_tail_float32(tiny_mel_inversion, tmp_path):
    model, _, _ = tiny_mel_inversion
    manifest = export_bundle(model, tmp_path / "fp16", precision="fp16", verify_seconds=1.0, max_seconds=12.0,
                             opt_seconds=4.0, max_batch=4)
    assert manifest.decoder_output == "log_mel" and manifest.graphs["decoder"].precision == "fp16"
    assert manifest.tolerances["onnxruntime"]["mel_mean_error"] <= 0.05


def test_int8_export_is_refused_in_one_line(tiny_mel_inversion, tmp_path):
    model, path, _ = tiny_mel_inversion
    with pytest.raises(ExportOptionError, match="use --precision fp32 or fp16"):
        export_bundle(model, tmp_path / "int8", precision="int8")
    result = CliRunner().invoke(export_main, [str(path), "-o", str(tmp_path / "cli"), "--precision", "int8"])
    assert result.exit_code != 0 and "mel_inversion" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "int8").exists() and not (tmp_path / "cli").exists()


def test_triton_python_model_decodes_like_the_codec(tiny_mel_inversion, real_clips, tmp_path, monkeypatch):
    import importlib.util

    from meltok_export.triton_repository import write_triton_repository

    from .triton_fakes import FakeServer, initialize_args, make_pb_utils

    _, _, bundle = tiny_mel_inversion
    repo = tmp_path / "repo"
    write_triton_repository(bundle, repo)
    config = (repo / "meltok_decoder" / "config.pbtxt").read_text()
    assert "log_mel" in config
    server = FakeServer(repo)
    pb_utils = make_pb_utils(server)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb_utils)
    spec = importlib.util.spec_from_file_location("meltok_triton_mel", repo / "meltok" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    served = module.TritonPythonModel()
    served.initialize(initialize_args(repo, "meltok"))
    with Codec.open(bundle, backend="ort-cpu", threads=1) as codec:
        tokens = codec.encode(real_clips["speech"][:44100])[0]
        expected = codec.decode(tokens)[0]
    [response] = served.execute([pb_utils.InferenceRequest(inputs=[pb_utils.Tensor("tokens", tokens)])])
    assert not response.has_error(), response.error().message()
    got = {tensor.name(): tensor.as_numpy() for tensor in response.output_tensors()}
    np.testing.assert_array_equal(got["decoded_audio"], expected)
    served.finalize()


def test_a_bundle_decodes_the_tokens_of_models_with_its_tokenizer(tiny_mel_inversion, tmp_path, real_clips):
    """``meltok-export --tokens-of``: a model with the same tokenizer (the neural-vocoder model this mel model
    came from) is checked and recorded; its token files then decode with the new bundle, through the CLI; a
    model whose encoder differs is refused before anything is written."""
    from meltok import MelTok
    from meltok_runtime.cli.main import main as runtime_main
    from meltok_runtime.io.tokenfile import write_tokens

    torch.manual_seed(0)  # the fixture's seed: the same tiny weights, with its neural vocoder
    source = MelTok.from_config("tiny")
    torch.nn.init.normal_(source.quantizer.embedding.weight, 0, 0.5)
    source_file = tmp_path / "source.safetensors"
    source.save(source_file)
    model, model_file, _ = tiny_mel_inversion
    assert model.tokenizer_difference(source) is None and source.model_id != model.model_id
    out = tmp_path / "bundle"
    result = CliRunner().invoke(export_main, ["export", str(model_file), "-o", str(out), "--tokens-of", str(source_file)])
    assert result.exit_code == 0, result.output
    assert load_manifest(out).accepts_tokens_of == [source.model_id]
    tokens = source.encode(real_clips["speech"][:44100])
    write_tokens(tmp_path / "old.mtok", tokens, sample_rate=44100, num_samples=44100, model_id=source.model_id,
                 codebook_size=source.codebook_size)
    result = CliRunner().invoke(runtime_main, ["decode", str(tmp_path / "old.mtok"), "-b", str(out),
                                               "-o", str(tmp_path / "old.wav")])
    assert result.exit_code == 0, result.output
    with Codec.open(out, backend="ort-cpu", threads=1) as codec:
        expected = codec.decode(tokens, num_samples=44100)[0]
    import soundfile as sf
    assert np.allclose(sf.read(tmp_path / "old.wav", dtype="float32")[0], expected, atol=1e-6)

    other = MelTok.from_config("tiny")  # another seed: another encoder
    other_file = tmp_path / "other.safetensors"
    other.save(other_file)
    with pytest.raises(ExportOptionError, match=r"--tokens-of .*their (encoder|quant_conv|quantizer)\..* differs"):
        export_bundle(model, tmp_path / "refused", tokens_of=[MelTok.load(other_file)])
    assert not (tmp_path / "refused").exists()
