"""``meltok-export triton``: the model repository's configs (parsed with Triton's own protobuf schema) and
its Python pipeline model (``model.py`` driven through a fake ``pb_utils`` whose BLS calls run the
repository's graphs with ONNX Runtime on the CPU), against ``meltok_runtime.Codec`` on real audio."""
import dataclasses
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner
from tritonclient.grpc import model_config_pb2

from meltok_export.cli import main
from meltok_export.errors import ExportDestinationError
from meltok_export.triton_repository import (TritonOptionError, TritonOptions, client_inputs,
                                             write_triton_repository)
from meltok_runtime import Codec
from meltok_runtime.codec import DEFAULT_BUNDLE
from meltok_runtime.manifest import Manifest, file_sha256

from .triton_fakes import FakeServer, initialize_args, make_pb_utils, read_config

DATA = Path(__file__).resolve().parents[1] / "data"
MODELS = ("meltok_encoder", "meltok_decoder", "meltok")


def dtype_name(value: int) -> str:
    return model_config_pb2.DataType.Name(value)


def kind_name(group) -> str:
    return model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The repository of the shipped bundle, written by the command line with default options."""
    out = tmp_path_factory.mktemp("triton") / "repo"
    result = CliRunner().invoke(main, ["triton", str(DEFAULT_BUNDLE), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def codec():
    with Codec.open(DEFAULT_BUNDLE, backend="ort-cpu", threads=1) as opened:
        yield opened


@pytest.fixture
def served(repo, monkeypatch):
    """``(model, server)``: the repository's ``meltok/1/model.py``, imported as Triton imports it (with the
    fake ``pb_utils``) and initialised with the args Triton passes."""
    server = FakeServer(repo)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", make_pb_utils(server))
    spec = importlib.util.spec_from_file_location("meltok_triton_pipeline", repo / "meltok" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize(initialize_args(repo, "meltok"))
    yield model, server
    model.finalize()


def request(pb_utils, **arrays):
    return pb_utils.InferenceRequest(inputs=[pb_utils.Tensor(name, array) for name, array in arrays.items()])


def outputs(response) -> dict:
    assert not response.has_error(), response.error().message()
    return {tensor.name(): tensor.as_numpy() for tensor in response.output_tensors()}


def mono(name: str, seconds: float | None = None) -> tuple[np.ndarray, int]:
    audio, rate = soundfile.read(DATA / name, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1, dtype=np.float32)
    return (audio if seconds is None else audio[:int(seconds * rate)]), rate


# ---------------------------------------------------------------------- configurations
def test_graph_model_configs_follow_the_manifest(repo):
    manifest = Manifest.from_json((DEFAULT_BUNDLE / "manifest.json").read_text())
    assert sorted(p.name for p in repo.iterdir()) == sorted(MODELS)
    for graph, model in (("encoder", "meltok_encoder"), ("decoder", "meltok_decoder")):
        config = read_config(repo / model)
        entry = manifest.graphs[graph]
        assert config.name == model and config.backend == "onnxruntime" and not config.platform
        assert config.max_batch_size == manifest.limits["max_batch"] == 16
        for tensors, specs in ((config.input, entry.inputs), (config.output, entry.outputs)):
            assert [t.name for t in tensors] == [s.name for s in specs]
            assert [dtype_name(t.data_type) for t in tensors] == [f"TYPE_{s.dtype.replace('float', 'FP').upper()}"
                                                                  for s in specs]
            assert [list(t.dims) for t in tensors] == [[-1 if isinstance(a, str) else a for a in s.shape[1:]]
                                                       for s in specs]
        assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8, 16]
        assert config.dynamic_batching.max_queue_delay_microseconds == 2000
        assert [(kind_name(g), g.count) for g in config.instance_group] == [("KIND_GPU", 1)]
        assert not config.optimization.HasField("execution_accelerators")
        assert file_sha256(repo / model / "1" / "model.onnx") == entry.sha256
    encoder, decoder = read_config(repo / "meltok_encoder"), read_config(repo / "meltok_decoder")
    assert (encoder.input[0].name, list(encoder.input[0].dims), list(encoder.output[0].dims)) == \
        ("audio", [-1], [12, -1])
    assert (decoder.input[0].name, dtype_name(decoder.input[0].data_type)) == ("tokens", "TYPE_INT32")


def test_pipeline_model_config(repo):
    config = read_config(repo / "meltok")
    assert (config.name, config.backend, config.max_batch_size) == ("meltok", "python", 0)
    assert [(t.name, dtype_name(t.data_type), list(t.dims), t.optional) for t in config.input] == [
        ("audio", "TYPE_FP32", [-1], True), ("sample_rate", "TYPE_INT32", [1], True),
        ("tokens", "TYPE_INT64", [12, -1], True), ("num_samples", "TYPE_INT64", [1], True)]
    assert [(t.name, dtype_name(t.data_type), list(t.dims)) for t in config.output] == [
        ("encoded_tokens", "TYPE_INT64", [12, -1]), ("encoded_num_samples", "TYPE_INT64", [1]),
        ("decoded_audio", "TYPE_FP32", [-1]), ("decoded_sample_rate", "TYPE_INT32", [1])]
    assert [(kind_name(g), g.count) for g in config.instance_group] == [("KIND_CPU", 4)]
    assert {key: value.string_value for key, value in config.parameters.items()} == {
        "encoder_model": "meltok_encoder", "decoder_model": "meltok_decoder", "max_batch": "16"}
    assert (repo / "meltok" / "1" / "model.py").read_bytes() == \
        (Path(sys.modules["meltok_export.triton_repository"].__file__).parent / "triton_model.py").read_bytes()
    assert (repo / "meltok" / "1" / "manifest.json").read_bytes() == (DEFAULT_BUNDLE / "manifest.json").read_bytes()


def test_cpu_batching_and_trt_accelerator_options(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["triton", str(DEFAULT_BUNDLE), "-o", str(tmp_path / "cpu"), "--cpu",
                                  "--instances", "2", "--max-batch-size", "4", "--preferred-batch-size", "4",
                                  "--preferred-batch-size", "2", "--max-queue-delay-us", "500",
                                  "--pipeline-instances", "3"])
    assert result.exit_code == 0, result.output
    config = read_config(tmp_path / "cpu" / "meltok_decoder")
    assert [(kind_name(g), g.count) for g in config.instance_group] == [("KIND_CPU", 2)]
    assert config.max_batch_size == 4 and list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    pipeline = read_config(tmp_path / "cpu" / "meltok")
    assert pipeline.parameters["max_batch"].string_value == "4" and pipeline.instance_group[0].count == 3

    for flags, precision in ((["--trt-accelerator"], "FP32"), (["--trt-accelerator", "--trt-fp16"], "FP16")):
        out = tmp_path / precision
        result = runner.invoke(main, ["triton", str(DEFAULT_BUNDLE), "-o", str(out), *flags])
        assert result.exit_code == 0, result.output
        for model in ("meltok_encoder", "meltok_decoder"):
            config = read_config(out / model)
            accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
            assert [a.name for a in accelerators] == ["tensorrt"]
            assert dict(accelerators[0].parameters) == {"precision_mode": precision,
                                                        "max_workspace_size_bytes": str(1 << 30)}
            assert kind_name(config.instance_group[0]) == "KIND_GPU" and config.backend == "onnxruntime"


@pytest.mark.parametrize("flags, message", [
    (["--trt-accelerator", "--cpu"], "--trt-accelerator applies to ONNX Runtime models on the GPU"),
    (["--trt-fp16"], "add --trt-accelerator"),
    (["--max-batch-size", "2", "--preferred-batch-size", "4"], "exceed max_batch_size 2"),
    (["--engines"], "has no TensorRT engine for its encoder"),
    (["--engines", "--cpu"], "TensorRT engines run on the GPU only"),
])
def test_options_that_do_not_fit_are_one_line_errors(tmp_path, flags, message):
    result = CliRunner().invoke(main, ["triton", str(DEFAULT_BUNDLE), "-o", str(tmp_path / "repo"), *flags])
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "repo").exists()


def _bundle_with_engines(tmp_path: Path, capabilities=("8.9", "9.0"), max_batch=8) -> Path:
    """A copy of the shipped bundle whose manifest lists TensorRT engines (placeholder bytes: only the
    repository writer reads them)."""
    bundle = Path(shutil.copytree(DEFAULT_BUNDLE, tmp_path / "bundle"))
    manifest = Manifest.from_json((bundle / "manifest.json").read_text())
    engines = []
    for graph, entry in manifest.graphs.items():
        for cc in capabilities:
            name = f"{graph}-sm{cc.replace('.', '')}.plan"
            (bundle / name).write_bytes(f"engine {graph} {cc}".encode())
            spec = entry.inputs[0]
            profile = {spec.name: {"min": [1] + [1] * (len(spec.shape) - 1), "opt": [4] + [1] * (len(spec.shape) - 1),
                                   "max": [max_batch] + [1] * (len(spec.shape) - 1)}}
            engines.append({"graph": graph, "file": name, "sha256": hashlib.sha256((bundle / name).read_bytes())
                            .hexdigest(), "onnx_sha256": entry.sha256, "tensorrt_version": "10.8.0",
                            "compute_capability": cc, "device_name": "test", "precision": "fp16", "profile": profile})
    dataclasses.replace(manifest, engines=engines).write(bundle)
    return bundle


def test_engines_become_tensorrt_plan_models(tmp_path):
    bundle = _bundle_with_engines(tmp_path)
    out = write_triton_repository(bundle, tmp_path / "repo", TritonOptions(engines=True))
    for graph, model in (("encoder", "meltok_encoder"), ("decoder", "meltok_decoder")):
        config = read_config(out / model)
        assert config.platform == "tensorrt_plan" and not config.backend
        assert dict(config.cc_model_filenames) == {"8.9": f"{graph}-sm89.plan", "9.0": f"{graph}-sm90.plan"}
        assert config.default_model_filename == f"{graph}-sm89.plan"
        assert config.max_batch_size == 8  # the engines' profile, below the bundle's max_batch of 16
        assert sorted(p.name for p in (out / model / "1").iterdir()) == [f"{graph}-sm89.plan", f"{graph}-sm90.plan"]
        assert (out / model / "1" / f"{graph}-sm90.plan").read_bytes() == (bundle / f"{graph}-sm90.plan").read_bytes()
    assert read_config(out / "meltok").parameters["max_batch"].string_value == "8"
    with pytest.raises(TritonOptionError, match="exceeds the batch of 8"):
        write_triton_repository(bundle, tmp_path / "big", TritonOptions(engines=True, max_batch_size=16))

    (bundle / "decoder-sm90.plan").write_bytes(b"tampered")
    with pytest.raises(Exception, match="does not match the hash in its manifest"):
        write_triton_repository(bundle, tmp_path / "tampered", TritonOptions(engines=True))
    assert not (tmp_path / "tampered").exists()


def test_two_engines_for_one_gpu_are_refused(tmp_path):
    bundle = _bundle_with_engines(tmp_path, capabilities=("9.0", "9.0"))
    with pytest.raises(TritonOptionError, match="several encoder engines for compute capability 9.0"):
        write_triton_repository(bundle, tmp_path / "repo", TritonOptions(engines=True))


def test_destination_rules(tmp_path, repo):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ExportDestinationError, match="not meltok's Triton models"):
        write_triton_repository(DEFAULT_BUNDLE, other, force=True)
    assert (other / "notes.txt").read_text() == "keep me"
    again = Path(shutil.copytree(repo, tmp_path / "again"))
    with pytest.raises(Exception, match="pass --force"):
        write_triton_repository(DEFAULT_BUNDLE, again)
    write_triton_repository(DEFAULT_BUNDLE, again, TritonOptions(cpu=True), force=True)
    assert kind_name(read_config(again / "meltok_encoder").instance_group[0]) == "KIND_CPU"
    refused = CliRunner().invoke(main, ["triton", str(DEFAULT_BUNDLE), "-o", str(again)])
    assert refused.exit_code == 1 and "pass --force (-y)" in refused.output
    replaced = CliRunner().invoke(main, ["triton", str(DEFAULT_BUNDLE), "-o", str(again), "-y"])
    assert replaced.exit_code == 0 and kind_name(read_config(again / "meltok_encoder").instance_group[0]) == "KIND_GPU"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "other"]  # no temporaries left
    with pytest.raises(Exception, match="input"):
        write_triton_repository(DEFAULT_BUNDLE, DEFAULT_BUNDLE, force=True)


def test_triton_command_runs_without_torch_and_export_stays_the_default(tmp_path):
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None
        from meltok_export.cli import main
        sys.argv[0] = "meltok-export"
        main()
    """)
    run = subprocess.run([sys.executable, "-c", code, "triton", str(DEFAULT_BUNDLE), "-o", str(tmp_path / "repo")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "tritonserver --model-repository" in run.stdout and (tmp_path / "repo" / "meltok" / "1" / "model.py").is_file()
    # without a subcommand, MODEL -o BUNDLE is still the export, which needs torch
    run = subprocess.run([sys.executable, "-c", code, str(DEFAULT_BUNDLE / "manifest.json"), "-o",
                          str(tmp_path / "bundle")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "pip install -e '.[export]'" in run.stderr and not (tmp_path / "bundle").exists()


# ---------------------------------------------------------------------- the Python pipeline model
def test_python_model_encodes_and_decodes_like_the_codec(served, codec):
    model, server = served
    pb_utils = sys.modules["triton_python_backend_utils"]
    audio, rate = mono("music48k.flac")  # 48 kHz: resampled by the runtime's own pipeline
    [response] = model.execute([request(pb_utils, audio=audio, sample_rate=np.array([rate], dtype=np.int32))])
    got = outputs(response)
    expected = codec.encode(audio, rate)
    assert got["encoded_tokens"].dtype == np.int64 and got["encoded_tokens"].shape == expected.shape[1:]
    np.testing.assert_array_equal(got["encoded_tokens"], expected[0])
    assert got["encoded_num_samples"].tolist() == [audio.size]
    assert [name for name, _ in server.calls] == ["meltok_encoder"]

    tokens = got["encoded_tokens"]
    num_samples = np.array([audio.size], dtype=np.int64)
    [at_model_rate, at_48k] = model.execute([
        request(pb_utils, tokens=tokens),
        request(pb_utils, tokens=tokens, num_samples=num_samples, sample_rate=np.array([rate], dtype=np.int32))])
    plain, resampled = outputs(at_model_rate), outputs(at_48k)
    np.testing.assert_array_equal(plain["decoded_audio"], codec.decode(tokens)[0])
    assert plain["decoded_sample_rate"].tolist() == [44100]
    np.testing.assert_array_equal(resampled["decoded_audio"], codec.decode(tokens, audio.size, sample_rate=rate)[0])
    assert resampled["decoded_audio"].shape == (audio.size,) and resampled["decoded_sample_rate"].tolist() == [rate]


def test_python_model_windows_long_audio_like_the_codec(served, codec):
    """26 s of music: three windows, each one BLS call with a batch of one, joined as the codec joins them."""
    model, server = served
    pb_utils = sys.modules["triton_python_backend_utils"]
    audio, rate = mono("long_music.ogg", seconds=26)
    [response] = model.execute([request(pb_utils, audio=audio, sample_rate=np.array([rate], dtype=np.int32))])
    tokens = outputs(response)["encoded_tokens"]
    np.testing.assert_array_equal(tokens, codec.encode(audio, rate)[0])
    [response] = model.execute([request(pb_utils, tokens=tokens, num_samples=np.array([audio.size]))])
    np.testing.assert_array_equal(outputs(response)["decoded_audio"], codec.decode(tokens, audio.size)[0])
    windows = codec.encode_windows(audio.size)
    assert windows == 3
    assert [name for name, _ in server.calls] == ["meltok_encoder"] * windows + ["meltok_decoder"] * windows
    assert all(shape[0] == 1 for _, shape in server.calls)


def test_bad_requests_get_their_own_error_responses(served):
    model, server = served
    pb_utils = sys.modules["triton_python_backend_utils"]
    audio, rate = mono("speech.flac", seconds=1)
    silly = audio.copy()
    silly[100] = np.nan
    rate_tensor = np.array([rate], dtype=np.int32)
    responses = model.execute([
        request(pb_utils, audio=audio, sample_rate=rate_tensor, tokens=np.zeros((12, 4), dtype=np.int64)),
        request(pb_utils),
        request(pb_utils, audio=audio),
        request(pb_utils, audio=silly, sample_rate=rate_tensor),
        request(pb_utils, tokens=np.full((12, 4), 8192, dtype=np.int64)),
        request(pb_utils, tokens=np.zeros((12, 4), dtype=np.int64), num_samples=np.array([10 ** 6])),
        request(pb_utils, audio=audio, sample_rate=np.array([rate, rate], dtype=np.int32)),
        request(pb_utils, audio=audio, sample_rate=rate_tensor),
    ])
    errors = [r.error().message() if r.has_error() else None for r in responses]
    assert "either 'audio' (to encode) or 'tokens'" in errors[0] and "either 'audio'" in errors[1]
    assert "needs 'sample_rate'" in errors[2]
    assert errors[3].startswith("audio has 1 NaN or infinite samples") and "index (100,)" in errors[3]
    assert "token 8192 at position [0, 0, 0] is outside the codebook [0, 8192)" in errors[4]
    assert "num_samples=1000000" in errors[5]
    assert "'sample_rate' holds 2 values" in errors[6]
    assert errors[7] is None and outputs(responses[7])["encoded_tokens"].shape[0] == 12  # the good one still ran

    server.failing["meltok_decoder"] = "instance out of memory"
    [failed] = model.execute([request(pb_utils, tokens=np.zeros((12, 4), dtype=np.int64))])
    assert failed.error().message() == "the Triton model 'meltok_decoder' failed: instance out of memory"


# ---------------------------------------------------------------------- client helper
def test_client_inputs_build_the_request():
    audio = np.linspace(-0.5, 0.5, 1000, dtype=np.float64)
    inputs = client_inputs(audio=audio, sample_rate=48000, protocol="http")
    assert [(i.name(), i.datatype(), i.shape()) for i in inputs] == [("audio", "FP32", [1000]),
                                                                       ("sample_rate", "INT32", [1])]
    request_json = inputs[0]._get_tensor()
    assert request_json["name"] == "audio" and request_json["parameters"]["binary_data_size"] == 4000
    assert np.frombuffer(inputs[0]._get_binary_data(), dtype=np.float32).tolist() == \
        audio.astype(np.float32).tolist()
    grpc = client_inputs(tokens=np.zeros((12, 5), dtype=np.int32), num_samples=9000)  # gRPC by default
    assert [(i.name(), i.datatype(), i.shape()) for i in grpc] == [("tokens", "INT64", [12, 5]),
                                                                     ("num_samples", "INT64", [1])]
    assert type(grpc[0]).__module__.startswith("tritonclient.grpc")
    assert np.frombuffer(grpc[0]._get_content(), dtype=np.int64).tolist() == [0] * 60
    for kwargs, message in (({}, "either audio"), ({"audio": audio}, "needs its sample_rate"),
                            ({"tokens": np.zeros((12, 1)), "protocol": "ws"}, "expected 'http' or 'grpc'")):
        with pytest.raises(TritonOptionError, match=message):
            client_inputs(**kwargs)


def test_initialize_reads_the_manifest_and_names_from_the_config(repo, monkeypatch):
    """A repository whose graph models are renamed in the pipeline's parameters calls those names."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", make_pb_utils(FakeServer(repo)))
    spec = importlib.util.spec_from_file_location("meltok_triton_pipeline_b", repo / "meltok" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = initialize_args(repo, "meltok")
    config = json.loads(args["model_config"])
    config["parameters"]["decoder_model"]["string_value"] = "somewhere_else"
    config["parameters"]["max_batch"]["string_value"] = "2"
    model = module.TritonPythonModel()
    model.initialize({**args, "model_config": json.dumps(config)})
    assert model.codec.max_batch == 2 and model.codec.model_id == Manifest.from_json(
        (DEFAULT_BUNDLE / "manifest.json").read_text()).model_id
    pb_utils = sys.modules["triton_python_backend_utils"]
    [response] = model.execute([request(pb_utils, tokens=np.zeros((12, 4), dtype=np.int64))])
    assert response.error().message() == \
        "the Triton model 'somewhere_else' failed: Request for unknown model: 'somewhere_else'"
