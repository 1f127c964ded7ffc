"""Int8 bundles (ONNX Runtime quantization of the trunk): export through the command line, float32 islands
checked by walking the graphs, the runtime's ort-cpu backend, and the figures in the manifest."""
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from meltok_export.bundle import export_bundle
from meltok_export.contract import TOLERANCES
from meltok_export.errors import ExportOptionError
from meltok_export.cli import main
from meltok_export.onnx_export import precision_variant
from meltok_export.islands import float32_islands, island_violations
from meltok_export.quantize import float32_layers
from meltok_export.verify import check_tolerances, verify_bundle
from meltok_runtime import Codec
from meltok_runtime.manifest import load_manifest

QDQ = {"QuantizeLinear", "DequantizeLinear"}


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory, tiny_model_file):
    """An int8 bundle of the tiny model, exported with ``meltok-export --precision int8``."""
    out = tmp_path_factory.mktemp("int8") / "tiny-int8"
    result = CliRunner().invoke(main, [str(tiny_model_file), "-o", str(out), "--precision", "int8",
                                       "--max-seconds", "8", "--opt-seconds", "4", "--max-batch", "2"])
    assert result.exit_code == 0, result.output
    assert "int8" in result.output and "mel distance" in result.output
    return out


def _graph(bundle, name):
    return onnx.load(str(bundle / f"{name}.onnx"))


def _producers(model):
    return {output: node for node in model.graph.node for output in node.output}


def _float_initializer(model, name):
    init = next((i for i in model.graph.initializer if i.name == name), None)
    return init is not None and init.data_type == onnx.TensorProto.FLOAT


def _upstream(model, tensor, stop_ops=("Conv",)):
    """Nodes feeding ``tensor`` back to (not through) the first node of ``stop_ops`` on each path; shape reads
    are not followed."""
    producers, seen, out, stack = _producers(model), set(), [], [tensor]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in seen or node.op_type in stop_ops:
            continue
        seen.add(node.name)
        out.append(node)
        if node.op_type != "Shape":
            stack.extend(i for i in node.input if i)
    return out


def test_int8_islands_are_float32(int8_bundle):
    encoder, decoder = _graph(int8_bundle, "encoder"), _graph(int8_bundle, "decoder")
    for model in (encoder, decoder):
        assert not any(n.op_type.startswith("QLinear") for n in model.graph.node)  # QDQ format only
        assert {p.key: p.value for p in model.metadata_props}["meltok.precision"] == "int8"
    producers = _producers(encoder)
    # STFT: the Conv reading the padded audio has a float32 basis and no dequantized input.
    stft = [n for n in encoder.graph.node if n.op_type == "Conv"
            and any(p.op_type == "Pad" for p in map(producers.get, n.input) if p is not None)
            and "audio" in {i for u in _upstream(encoder, n.input[0]) for i in u.input}]
    assert len(stft) == 1
    assert not any(getattr(producers.get(i), "op_type", None) in QDQ for i in stft[0].input)
    assert _float_initializer(encoder, stft[0].input[1])
    assert not any(n.op_type in QDQ for n in _upstream(encoder, stft[0].output[0], stop_ops=()))
    # Log-mel up to the Log and the VQ distances back to the latent Conv: no quantize/dequantize at all.
    log_node = next(n for n in encoder.graph.node if n.op_type == "Log")
    assert not any(n.op_type in QDQ for n in _upstream(encoder, log_node.output[0], stop_ops=()))
    argmin = next(n for n in encoder.graph.node if n.op_type == "ArgMin")
    vq = _upstream(encoder, argmin.input[0])
    assert any(n.op_type == "MatMul" for n in vq) and not any(n.op_type in QDQ for n in vq)
    latent = next(p for p in map(producers.get, {i for n in vq for i in n.input}) if p is not None
                  and p.op_type == "Conv")
    assert not any(getattr(producers.get(i), "op_type", None) == "DequantizeLinear" for i in latent.input[1:])
    # ISTFT: the ConvTransposes of the head read float32 bases and nothing dequantized, and nothing between
    # the head's Linear and the output is a quantize/dequantize node.
    producers = _producers(decoder)
    head = _upstream(decoder, decoder.graph.output[0].name, stop_ops=("Gemm", "MatMul"))
    istft = [n for n in head if n.op_type == "ConvTranspose"]
    assert len(istft) == 2 and not any(n.op_type in QDQ for n in head)
    for node in istft:
        assert _float_initializer(decoder, node.input[1])
        assert not any(getattr(producers.get(i), "op_type", None) in QDQ for i in node.input)
    # The trunk is quantized: most of its convolutions read int8 weights.
    for model in (encoder, decoder):
        producers = _producers(model)
        weights = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
        quantized = [n for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in weights]
        assert len(quantized) >= 8
        for node in quantized:
            scale = numpy_helper.to_array(next(i for i in model.graph.initializer
                                               if i.name == weights[node.input[1]].input[1]))
            assert scale.ndim == 1 and scale.size > 1  # per output channel
        assert island_violations(model, "encoder" if model is encoder else "decoder") == []


def test_island_check_catches_a_quantized_island(int8_bundle):
    """``island_violations`` reports a DequantizeLinear put in front of the ISTFT."""
    decoder = _graph(int8_bundle, "decoder")
    node = next(n for n in float32_islands(decoder, "decoder")["head"] if n.op_type == "ConvTranspose")
    dq = onnx.helper.make_node("DequantizeLinear", ["q", "s"], [node.input[0] + "_dq"], name="injected")
    decoder.graph.node.insert(0, dq)
    node.input[0] = dq.output[0]
    assert any("injected" in problem for problem in island_violations(decoder, "decoder"))


def test_float32_layers_are_the_listed_ones(exported, int8_bundle):
    """The quantizer's own choice on the source graphs: shortcuts and down/up-sampling in float32, block
    convolutions and the backbone's pointwise layers quantized."""
    folder = exported("tiny", "fp32")
    kept = {name: float32_layers(onnx.load(str(folder / f"{name}.onnx")), name) for name in ("encoder", "decoder")}
    assert any("/downsample/" in n for n in kept["encoder"]) and any("/upsample/" in n for n in kept["decoder"])
    assert any("attention" in why for why in kept["encoder"].values())
    assert not any("/block.0/conv1/" in n or "/block_1/conv1/" in n for n in (*kept["encoder"], *kept["decoder"]))
    decoder = _graph(int8_bundle, "decoder")
    gemms = [n for n in decoder.graph.node if n.op_type == "Gemm"]
    reads = {o for n in decoder.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert sum(any(i in reads for i in n.input) for n in gemms) == len(gemms) - 1  # all but the head's Linear


def test_int8_manifest_records_figures_and_method(int8_bundle, tiny_model):
    manifest = load_manifest(int8_bundle)
    assert {g.precision for g in manifest.graphs.values()} == {"int8"} and manifest.engines == ()
    tolerances = manifest.tolerances
    figures = tolerances["onnxruntime"]
    assert tolerances["limits"] == TOLERANCES["int8"]
    assert figures["token_agreement"] >= TOLERANCES["int8"]["token_agreement_min"]
    assert 0 < figures["mel_distance"] <= TOLERANCES["int8"]["mel_distance_max"]
    assert all("mel_distance" in case for case in tolerances["cases"])
    record = tolerances["int8"]
    assert record["format"] == "QDQ" and "per tensor" in record["activations"] and "per output" in record["weights"]
    assert record["graphs"]["encoder"]["float32_islands"].keys() == {"log-mel", "vq"}
    assert record["graphs"]["decoder"]["float32_islands"].keys() == {"head"}
    assert record["graphs"]["encoder"]["quantized_nodes"] > 0 and record["graphs"]["decoder"]["quantized_nodes"] > 0
    trt = tolerances["tensorrt_ops"]
    assert "ONNX Runtime on the CPU" in trt["skipped"] and trt["int8_violations"]["encoder"] > 0
    json.dumps(tolerances)  # plain JSON
    assert verify_bundle(int8_bundle, tiny_model, max_seconds=2.0)["passed"]


def test_int8_bundle_runs_on_ort_cpu(int8_bundle, tiny_model, real_clips):
    import torch

    audio = real_clips["music"][: 3 * 44100]
    with Codec.open(int8_bundle, backend="ort-cpu", threads=1) as codec:
        tokens = codec.encode(audio, 44100)
        decoded = codec.decode(tokens, num_samples=audio.shape[-1])
    reference = tiny_model.encode(audio, 44100)
    assert tokens.shape == reference.shape and tokens.dtype == np.int64
    assert np.mean(tokens == np.asarray(reference)) >= TOLERANCES["int8"]["token_agreement_min"]
    assert decoded.shape == (1, audio.shape[-1]) and np.isfinite(decoded).all()
    with torch.inference_mode():
        expected = tiny_model.decode(tokens, num_samples=audio.shape[-1])
    from meltok.metrics import mel_distance

    assert mel_distance(np.asarray(expected)[0], decoded[0]) <= TOLERANCES["int8"]["mel_distance_max"]


def test_int8_options_and_floors(tiny_model, tmp_path):
    """TensorRT engines are refused for int8, and the int8 floors fail an export that falls under them."""
    with pytest.raises(ExportOptionError, match="ONNX Runtime on the CPU"):
        export_bundle(tiny_model, tmp_path / "b", engine="trt", precision="int8")
    assert not (tmp_path / "b").exists()
    with pytest.raises(ExportOptionError, match="quantized from the fp32 ones by the bundle writer"):
        precision_variant(tiny_model, "int8")
    passing = {"token_agreement": 0.9, "token_mismatches_beyond_ties": 50, "waveform_max_error": 0.5,
               "waveform_snr_db": 10.0, "mel_mean_error": 0.5, "mel_distance": 0.2}
    assert check_tolerances(passing, "int8", "ONNX Runtime") == []
    failures = check_tolerances({**passing, "token_agreement": 0.5, "mel_distance": 2.0}, "int8", "ONNX Runtime")
    assert len(failures) == 2 and "token_agreement" in failures[0] and "mel_distance" in failures[1]
