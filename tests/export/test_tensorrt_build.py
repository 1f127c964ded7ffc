"""The TensorRT builder's decisions, exercised against a stand-in ``tensorrt`` module (no GPU needed):
strongly typed networks for float16 graphs and on TensorRT 11, TF32 off for float32 graphs, the weakly
typed FP16 path of TensorRT 10, optimisation profiles, the timing cache, parser errors."""
import enum
import sys
import types

import pytest

from meltok_export import tensorrt_build
from meltok_export.tensorrt_build import build_engine, profile_shapes
from meltok_runtime.errors import BackendError, BundleError


class _Layer:
    def __init__(self, name, kind):
        self.name, self.type, self.precision, self.num_outputs, self.types = name, kind, None, 1, {0: "float16"}

    def get_output_type(self, index):
        return self.types[index]

    def set_output_type(self, index, dtype):
        self.types[index] = dtype


def fake_tensorrt(version, parse_ok=True):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.float32, trt.float16 = "float32", "float16"
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("Flag", {"STRONGLY_TYPED": 1})
    names = ["TF32"] + (["FP16", "OBEY_PRECISION_CONSTRAINTS"] if version.startswith("10.") else [])
    trt.BuilderFlag = enum.Enum("BuilderFlag", names)
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE"])
    trt.LayerType = enum.Enum("LayerType", ["CONVOLUTION", "NORMALIZATION", "TOPK"])
    log = trt.log = {"flags": set(), "cleared": set(), "profiles": {}}
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=None: None})

    class Network:
        def __init__(self, flags):
            log["network_flags"] = flags
            self.layers = [_Layer("/model/encoder/module/conv_in/Conv", trt.LayerType.CONVOLUTION),
                           _Layer("/model/encoder/module/norm_out/module/InstanceNormalization",
                                  trt.LayerType.NORMALIZATION),
                           _Layer("/model/quantizer/ArgMin", trt.LayerType.TOPK)]
            self.num_layers = len(self.layers)

        def get_layer(self, index):
            return self.layers[index]

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger):
            log["network"] = network

        def parse_from_file(self, path):
            return parse_ok

        def get_error(self, index):
            return "In node 3 (Foo): UNSUPPORTED_NODE"

    class Cache:
        def serialize(self):
            return b"timing-cache"

    class Config:
        def set_flag(self, flag):
            log["flags"].add(flag.name)

        def clear_flag(self, flag):
            log["cleared"].add(flag.name)

        def set_memory_pool_limit(self, pool, size):
            log["workspace"] = size

        def add_optimization_profile(self, profile):
            log["profiles"] = profile.shapes

        def create_timing_cache(self, data):
            log["cache_in"] = bytes(data)
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            self.shapes[name] = (list(low), list(opt), list(high))

    class Builder:
        def __init__(self, logger):
            pass

        create_network = staticmethod(lambda flags: Network(flags))
        create_builder_config = staticmethod(Config)
        create_optimization_profile = staticmethod(Profile)

        def build_serialized_network(self, network, config):
            return b"plan-bytes"

    trt.Builder, trt.OnnxParser = Builder, Parser
    return trt


@pytest.fixture
def use_trt(monkeypatch):
    def install(version, parse_ok=True):
        trt = fake_tensorrt(version, parse_ok)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(tensorrt_build, "device_info", lambda device=0: {"compute_capability": "9.0",
                                                                              "name": "Fake H100"})
        return trt
    return install


@pytest.fixture(scope="module")
def profiles(tiny_model):
    return profile_shapes(tiny_model, max_batch=4, max_seconds=8.0, opt_seconds=2.0)


def test_profiles_follow_the_framing_rules(profiles):
    audio, tokens = profiles["encoder"]["audio"], profiles["decoder"]["tokens"]
    assert [audio[k][0] for k in ("min", "opt", "max")] == [1, 1, 4]
    assert audio["min"][1] == 1792 and audio["max"][1] >= 8 * 44100 and (audio["max"][1] // 256 + 1) % 8 == 0
    assert [tokens[k][1] for k in ("min", "opt", "max")] == [12, 12, 12]
    assert tokens["min"][2] == 1 and tokens["max"][2] == (audio["max"][1] // 256 + 1) // 8


def test_float32_graph_on_tensorrt_10(use_trt, exported, profiles, tmp_path):
    trt = use_trt("10.13.0")
    folder = exported("tiny", "fp32")
    entry = build_engine(folder / "decoder.onnx", tmp_path / "decoder.plan", profiles["decoder"], precision="fp32",
                         graph="decoder", timing_cache=tmp_path / "cache.bin")
    assert trt.log["network_flags"] == 0 and trt.log["cleared"] == {"TF32"} and not trt.log["flags"]
    low, opt, high = trt.log["profiles"]["tokens"]
    assert [low, opt, high] == [profiles["decoder"]["tokens"][k] for k in ("min", "opt", "max")]
    assert (tmp_path / "decoder.plan").read_bytes() == b"plan-bytes"
    assert (tmp_path / "cache.bin").read_bytes() == b"timing-cache"
    assert (entry.graph, entry.file, entry.tensorrt_version, entry.compute_capability, entry.device_name) == (
        "decoder", "decoder.plan", "10.13.0", "9.0", "Fake H100")
    build_engine(folder / "decoder.onnx", tmp_path / "decoder.plan", profiles["decoder"], precision="fp32",
                 graph="decoder", timing_cache=tmp_path / "cache.bin")
    assert trt.log["cache_in"] == b"timing-cache"  # the second build starts from the first one's cache


def test_float16_graph_is_strongly_typed(use_trt, exported, profiles, tmp_path):
    trt = use_trt("10.13.0")
    build_engine(exported("tiny", "fp16") / "encoder.onnx", tmp_path / "encoder.plan", profiles["encoder"],
                 precision="fp16", graph="encoder")
    assert trt.log["network_flags"] == 1 << 1 and not trt.log["flags"] and trt.log["cleared"] == {"TF32"}
    assert (tmp_path / "timing.cache").is_file()


def test_weakly_typed_fp16_on_tensorrt_10_pins_the_islands(use_trt, exported, profiles, tmp_path):
    trt = use_trt("10.13.0")
    build_engine(exported("tiny", "fp32") / "encoder.onnx", tmp_path / "encoder.plan", profiles["encoder"],
                 precision="fp16", graph="encoder")
    assert trt.log["flags"] == {"FP16", "OBEY_PRECISION_CONSTRAINTS"} and trt.log["network_flags"] == 0
    conv, norm, argmin = trt.log["network"].layers
    assert conv.precision is None and norm.precision == argmin.precision == "float32"
    assert argmin.types[0] == "float32"


def test_tensorrt_11_refuses_weak_typing_and_types_everything(use_trt, exported, profiles, tmp_path):
    trt = use_trt("11.4.0")
    with pytest.raises(BackendError, match="strongly typed"):
        build_engine(exported("tiny", "fp32") / "encoder.onnx", tmp_path / "e.plan", profiles["encoder"],
                     precision="fp16", graph="encoder")
    build_engine(exported("tiny", "fp32") / "encoder.onnx", tmp_path / "e.plan", profiles["encoder"],
                 precision="fp32", graph="encoder")
    assert trt.log["network_flags"] == 1 << 1 and trt.log["cleared"] == {"TF32"}


def test_parser_errors_are_reported(use_trt, exported, profiles, tmp_path):
    use_trt("10.13.0", parse_ok=False)
    with pytest.raises(BundleError, match="cannot parse encoder.onnx: In node 3"):
        build_engine(exported("tiny", "fp32") / "encoder.onnx", tmp_path / "e.plan", profiles["encoder"],
                     precision="fp32", graph="encoder")
    assert not (tmp_path / "e.plan").exists()


def test_missing_tensorrt_is_a_backend_error(monkeypatch, exported, profiles, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert "pip install 'meltok[trt]'" in tensorrt_build.tensorrt_available()
    with pytest.raises(BackendError, match="TensorRT is not installed"):
        build_engine(exported("tiny", "fp32") / "encoder.onnx", tmp_path / "e.plan", profiles["encoder"],
                     precision="fp32", graph="encoder")


class _OrtEngine:
    """Stands in for EngineRunner: runs the graph the plan was 'built' from with ONNX Runtime."""

    def __init__(self, plan_path):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(plan_path).replace(".plan", ".onnx"),
                                                    providers=["CPUExecutionProvider"])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def run(self, feeds):
        return dict(zip([o.name for o in self.session.get_outputs()], self.session.run(None, feeds)))


def test_engine_verification_plumbing(tiny_bundle, tiny_model, profiles, monkeypatch):
    from meltok_export.verify import tolerance_record, verify_engines
    from meltok_runtime.manifest import EngineEntry

    monkeypatch.setattr(tensorrt_build, "tensorrt_available", lambda: None)
    monkeypatch.setattr(tensorrt_build, "engine_mismatch", lambda engine: None)
    monkeypatch.setattr(tensorrt_build, "EngineRunner", _OrtEngine)
    out, manifest = tiny_bundle
    small = {g: {n: dict(s, max=[1, *s["max"][1:]]) for n, s in p.items()} for g, p in profiles.items()}
    engines = tuple(EngineEntry(graph=g, file=f"{g}.plan", sha256="0", onnx_sha256="0", tensorrt_version="10.13.0",
                                compute_capability="9.0", device_name="Fake", precision="fp32", profile=small[g])
                    for g in ("encoder", "decoder"))
    report = verify_engines(tiny_model, out, engines, "fp32", max_seconds=2.0)
    assert report["passed"], report["failures"]
    assert {c["batch"] for c in report["cases"]} == {1}  # the batch-2 case is outside the profile
    assert report["vs_onnxruntime"]["token_agreement"] == 1.0
    record = tolerance_record({**_ort_report(manifest), "tensorrt": report})
    assert record["tensorrt"]["vs_onnxruntime"]["waveform_snr_db"] > 100


def _ort_report(manifest):
    figures = manifest.tolerances["onnxruntime"]
    return {**figures, "tolerances": manifest.tolerances["limits"], "reference": "r", "audio": "a", "backend": "b",
            "cases": [{"name": "x", "batch": 1, "samples": 1, "columns": 1, "token_agreement": 1.0,
                       "waveform_snr_db": 99.0}]}
