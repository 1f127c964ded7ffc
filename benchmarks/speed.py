"""Encode and decode speed of every MelTok backend, side by side, on the same real audio, in one run.

For each model (``--presets``, random weights, seeded; ``--model`` files; the shipped default model
``meltok/assets/default.safetensors`` when it exists), each batch size and audio length, and each
backend available here, runs encode (audio -> tokens) and decode (tokens -> audio) with warm-up and
repeated timed runs, and reports the median and p90 latency, the real-time factor, x-real-time, the
speed-up against PyTorch eager on the same device, the FLOP floor (``cost.py``) and how far each
backend is from it, the peak memory and the token agreement with the reference encode.

Backends (``--backends``, default all; one not available here is listed with the reason):

- ``torch-cpu-fp32``: PyTorch eager, float32, CPU (the reference; ``vs eager`` of CPU backends);
- ``torch-cuda-fp32`` (TF32 off; ``vs eager`` of GPU backends), ``torch-cuda-tf32``, ``torch-cuda-fp16``
  (autocast float16);
- ``ort-cpu-fp32``, ``ort-cpu-int8`` (an int8 bundle, ``meltok-export --precision int8``: the trunk quantized
  by ONNX Runtime, float32 islands; or given with ``--bundle ort-cpu-int8=PATH``; its ``x floor`` is against
  the float32 matmul rate), ``ort-cuda-fp32``, ``ort-cuda-fp16``, ``trt-fp16``: ``meltok_runtime`` on an
  export bundle.

Every configuration (model, backend, op, batch, length) runs in a fresh subprocess, so its peak RSS
(``VmHWM`` of ``/proc/self/status``; ``resource.getrusage`` where there is no ``/proc``) is its own; on CUDA the peak device memory is ``torch.cuda.max_memory_allocated``
for torch backends and the process's device memory sampled with NVML (``nvidia-ml-py``) for the others.
Configurations whose estimated time (warm-up + repeats) exceeds ``--budget-seconds`` are skipped and
listed as "skipped: over budget". The estimate comes from the same backend's previous (smaller)
configuration, or for the first one from the counted FLOPs at a third of the measured matmul rate.

    python benchmarks/speed.py --threads 2 --json speed.json --png speed.png
    python benchmarks/speed.py --presets tiny --seconds 1 --batches 1 --repeats 1 --backends torch-cpu-fp32,ort-cpu-fp32

``--mode api`` (default) times the user API (``MelTok.encode``/``decode`` and ``meltok_runtime.Codec``,
numpy in and out, inputs longer than one window processed in windows with context, the same window plan
for all backends); ``--mode graph`` times one call of the bare graph on the whole input (``MelTok.tokenize``/
``detokenize`` and the runtime backend's ``run``), as the DESIGN measurements did.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MUSIC = ROOT / "tests" / "data" / "long_music.ogg"
DEFAULT_MODEL_FILE = ROOT / "meltok" / "assets" / "default.safetensors"
DEFAULT_BUNDLE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "meltok" / "bench-bundles"
SAMPLE_RATE = 44100
ITEM_OFFSET_SECONDS = 2.5  # batch item i starts i * 2.5 s into the (tiled) music

# name -> how it runs. "eager": the PyTorch eager backend its speed-up is measured against;
# "rate": the matmul rate (cost.py) that sets its FLOP floor.
BACKENDS = {
    "torch-cpu-fp32": dict(kind="torch", device="cpu", precision="fp32", eager="torch-cpu-fp32", rate="cpu-fp32"),
    "torch-cuda-fp32": dict(kind="torch", device="cuda", precision="fp32", eager="torch-cuda-fp32", rate="cuda-fp32"),
    "torch-cuda-tf32": dict(kind="torch", device="cuda", precision="tf32", eager="torch-cuda-fp32", rate="cuda-tf32"),
    "torch-cuda-fp16": dict(kind="torch", device="cuda", precision="fp16", eager="torch-cuda-fp32", rate="cuda-fp16"),
    "ort-cpu-fp32": dict(kind="runtime", runtime="ort-cpu", device="cpu", engine="onnx", precision="fp32",
                         eager="torch-cpu-fp32", rate="cpu-fp32"),
    "ort-cpu-int8": dict(kind="runtime", runtime="ort-cpu", device="cpu", engine="onnx", precision="int8",
                         eager="torch-cpu-fp32", rate="cpu-fp32"),
    # ONNX Runtime's CUDA EP may use TF32 for float32 convolutions and matmuls: its floor is the TF32 rate.
    "ort-cuda-fp32": dict(kind="runtime", runtime="ort-cuda", device="cuda", engine="onnx", precision="fp32",
                          eager="torch-cuda-fp32", rate="cuda-tf32"),
    "ort-cuda-fp16": dict(kind="runtime", runtime="ort-cuda", device="cuda", engine="onnx", precision="fp16",
                          eager="torch-cuda-fp32", rate="cuda-fp16"),
    "trt-fp16": dict(kind="runtime", runtime="trt", device="cuda", engine="trt", precision="fp16",
                     eager="torch-cuda-fp32", rate="cuda-fp16"),
}
OPS = ("encode", "decode")
GRAPH_OF = {"encode": "encoder", "decode": "decoder"}
FLOP_ESTIMATE_EFFICIENCY = 1 / 3  # first estimate of a backend: counted FLOPs at a third of the matmul rate


def _load_sibling(name: str):
    """Import ``benchmarks/<name>.py`` whether this file runs as a script or is imported by path."""
    module_name = f"meltok_benchmarks_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, Path(__file__).resolve().parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------- audio
def load_music(path=MUSIC) -> np.ndarray:
    """The real music clip as mono float32 ``[N]`` at 44.1 kHz (channels mixed down by the mean)."""
    import soundfile as sf

    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    if rate != SAMPLE_RATE:
        raise ValueError(f"{path} is at {rate} Hz; the benchmark expects a {SAMPLE_RATE} Hz clip")
    return np.ascontiguousarray(audio.mean(axis=1))


def make_audio(music: np.ndarray, batch: int, seconds: float) -> np.ndarray:
    """``[batch, seconds * 44100]`` float32: the music tiled to length, item i starting i * 2.5 s in."""
    length = int(round(seconds * SAMPLE_RATE))
    out = np.empty((batch, length), np.float32)
    for item in range(batch):
        start = int(item * ITEM_OFFSET_SECONDS * SAMPLE_RATE) % music.shape[0]
        out[item] = np.take(music, np.arange(start, start + length), mode="wrap")
    return out


# ------------------------------------------------------------------------------------------- memory
def _proc_status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def current_rss_mb() -> float | None:
    return _proc_status_mb("VmRSS")


def peak_rss_mb() -> tuple[float, str]:
    """Peak resident set size of this process and how it was read.

    ``VmHWM`` of ``/proc/self/status`` first: it belongs to this process's own address space, while
    ``ru_maxrss`` survives fork + exec (a worker started by a 500 MB parent would report 500 MB).
    ``resource.getrusage`` is the fallback where there is no ``/proc`` (KiB on Linux, bytes on macOS).
    """
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm, "/proc/self/status VmHWM"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024), "getrusage ru_maxrss"


class NvmlSampler:
    """Peak device memory of this process, sampled with NVML every 5 ms (``nvidia-ml-py``); inert without it.

    Reads the process's own entry of ``nvmlDeviceGetComputeRunningProcesses``; where a container hides
    process ids from NVML, the device's used memory above its level at the start instead (then other
    processes on the same GPU count too: ``method`` says which).
    """

    def __init__(self):
        self.process_peak = self.device_peak = None
        self.error, self._stop = None, threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._baseline = pynvml.nvmlDeviceGetMemoryInfo(self._handle).used
        except Exception as error:  # noqa: BLE001 - NVML is optional
            self._nvml = None
            self.error = f"not measured: no NVML ({type(error).__name__}); pip install nvidia-ml-py"
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        pid = os.getpid()
        for process in self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
            if process.pid == pid and process.usedGpuMemory is not None:
                self.process_peak = max(self.process_peak or 0.0, process.usedGpuMemory / 2 ** 20)
        used = (self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used - self._baseline) / 2 ** 20
        self.device_peak = max(self.device_peak or 0.0, used)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except Exception as error:  # noqa: BLE001
                self.error = f"NVML query failed: {error}"
                return
            self._stop.wait(0.005)

    @property
    def peak(self) -> tuple[float | None, str]:
        if self.process_peak is not None:
            return self.process_peak, "NVML memory of this process"
        if self.device_peak is not None:
            return self.device_peak, "NVML device memory used above the start (other processes count too)"
        return None, self.error or "not measured"

    def __enter__(self):
        if self._nvml is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._nvml is not None:
            try:
                self._sample()
            except Exception:  # noqa: BLE001
                pass


# ------------------------------------------------------------------------------------------- worker
def _torch_runner(spec: dict):
    """(encode_fn, decode_fn, timer, cleanup info) for a torch backend."""
    import torch

    from meltok import MelTok
    from meltok.modelfile import weights_hash
    from meltok_runtime.framing import padded_length

    backend = BACKENDS[spec["backend"]]
    torch.set_num_threads(spec["threads"])
    device = backend["device"]
    if device == "cuda":
        tf32 = backend["precision"] == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    source = spec["model"]
    if source.get("preset"):
        torch.manual_seed(source.get("seed", 0))
        model = MelTok.from_config(source["preset"])
    else:
        model = MelTok.load(source["file"])
    if spec.get("model_sha256") and weights_hash(model.state_dict()) != spec["model_sha256"]:
        raise RuntimeError("the worker's model weights differ from the main process's (random init not "
                           "reproducible?): results would not compare the same model")
    model = model.to(device).eval()
    autocast = backend["precision"] == "fp16"
    window = {} if spec.get("window_seconds") is None else {"window_seconds": spec["window_seconds"]}
    hop, compression = model.hop_length, model.config.tokenizer.compression

    def context():
        if autocast:
            return torch.autocast("cuda", dtype=torch.float16)
        import contextlib

        return contextlib.nullcontext()

    if spec["mode"] == "api":
        def encode(audio):
            with context():
                return model.encode(audio, SAMPLE_RATE, **window)

        def decode(tokens):
            with context():
                return model.decode(tokens, **window)
        prepare_audio = prepare_tokens = lambda x: x  # noqa: E731
    else:
        def prepare_audio(audio):
            target = padded_length(audio.shape[-1], hop, compression)
            return torch.from_numpy(np.pad(audio, ((0, 0), (0, target - audio.shape[-1])))).to(device)

        def prepare_tokens(tokens):
            return torch.from_numpy(tokens.astype(np.int64)).to(device)

        @torch.inference_mode()
        def encode(audio):
            with context():
                return model.tokenize(audio)

        @torch.inference_mode()
        def decode(tokens):
            with context():
                return model.detokenize(tokens)

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

        def timer(fn, arg):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(arg)
            end.record()
            end.synchronize()
            return start.elapsed_time(end), out

        def gpu_peak():
            return torch.cuda.max_memory_allocated() / 2 ** 20, "torch.cuda.max_memory_allocated"
    else:
        timer, gpu_peak = _wall_timer, None

    def to_numpy(out):
        return out.detach().cpu().numpy() if hasattr(out, "detach") else out

    return dict(encode=encode, decode=decode, prepare_audio=prepare_audio, prepare_tokens=prepare_tokens,
                timer=timer, gpu_peak=gpu_peak, to_numpy=to_numpy, close=lambda: None)


def _wall_timer(fn, arg):
    start = time.perf_counter()
    out = fn(arg)
    return (time.perf_counter() - start) * 1e3, out


def _runtime_runner(spec: dict):
    """The same for a ``meltok_runtime`` backend (no torch imported)."""
    from meltok_runtime import Codec
    from meltok_runtime.backends import BACKENDS as RUNTIME_BACKENDS
    from meltok_runtime.framing import padded_length
    from meltok_runtime.manifest import load_manifest

    backend = BACKENDS[spec["backend"]]
    bundle = spec["bundle"]
    if spec["mode"] == "api":
        window = {} if spec.get("window_seconds") is None else {"window_seconds": spec["window_seconds"]}
        codec = Codec.open(bundle, backend=backend["runtime"], threads=spec["threads"], **window)
        encode = lambda audio: codec.encode(audio, SAMPLE_RATE)  # noqa: E731
        decode = codec.decode
        prepare_audio = prepare_tokens = lambda x: x  # noqa: E731
        close = codec.close
    else:
        manifest = load_manifest(bundle)
        cls = RUNTIME_BACKENDS[backend["runtime"]]
        cls.check_available(bundle, manifest)
        graphs = {name: cls(bundle, manifest, name, threads=spec["threads"]).open() for name in ("encoder", "decoder")}
        enc_in, dec_in = graphs["encoder"].inputs[0], graphs["decoder"].inputs[0]
        enc_out, dec_out = graphs["encoder"].outputs[0].name, graphs["decoder"].outputs[0].name

        def prepare_audio(audio):
            target = padded_length(audio.shape[-1], manifest.hop_length, manifest.compression)
            return np.ascontiguousarray(np.pad(audio, ((0, 0), (0, target - audio.shape[-1]))).astype(enc_in.dtype))

        def prepare_tokens(tokens):
            return np.ascontiguousarray(tokens.astype(dec_in.dtype))

        encode = lambda audio: graphs["encoder"].run({enc_in.name: audio})[enc_out]  # noqa: E731
        decode = lambda tokens: graphs["decoder"].run({dec_in.name: tokens})[dec_out]  # noqa: E731

        def close():
            for graph in graphs.values():
                graph.close()
    return dict(encode=encode, decode=decode, prepare_audio=prepare_audio, prepare_tokens=prepare_tokens,
                timer=_wall_timer, gpu_peak=None, to_numpy=lambda x: x, close=close)


def run_worker(spec: dict) -> dict:
    """Time one configuration: load, warm up, ``repeats`` timed calls; peak memory; outputs saved."""
    backend = BACKENDS[spec["backend"]]
    result = {"rss_start_mb": current_rss_mb()}
    t0 = time.perf_counter()
    sampler = NvmlSampler() if backend["device"] == "cuda" and backend["kind"] == "runtime" else None
    with (sampler or _Null()):
        runner = _torch_runner(spec) if backend["kind"] == "torch" else _runtime_runner(spec)
        result["load_s"] = time.perf_counter() - t0
        result["rss_loaded_mb"] = current_rss_mb()
        if spec["op"] == "encode":
            arg = runner["prepare_audio"](make_audio(load_music(spec["music"]), spec["batch"], spec["seconds"]))
            fn = runner["encode"]
        else:
            arg = runner["prepare_tokens"](np.load(spec["tokens_in"]))
            fn = runner["decode"]
        for _ in range(spec["warmup"]):
            runner["timer"](fn, arg)
        times, out = [], None
        for _ in range(spec["repeats"]):
            elapsed, out = runner["timer"](fn, arg)
            times.append(elapsed)
        out = runner["to_numpy"](out)
        runner["close"]()
    result["times_ms"] = times
    result["output_shape"] = list(out.shape)
    result["peak_rss_mb"], result["peak_rss_method"] = peak_rss_mb()
    if runner["gpu_peak"] is not None:
        result["gpu_peak_mb"], result["gpu_peak_method"] = runner["gpu_peak"]()
    elif sampler is not None:
        result["gpu_peak_mb"], result["gpu_peak_method"] = sampler.peak
    if spec["op"] == "encode" and spec.get("tokens_out"):
        np.save(spec["tokens_out"], np.asarray(out).astype(np.int32))
    return result


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = run_worker(spec)
    except Exception as error:  # noqa: BLE001 - reported to the main process as a failed configuration
        import traceback

        result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    Path(spec["result"]).write_text(json.dumps(result))
    return 0


def run_isolated(spec: dict, workdir: Path, timeout: float, isolate: bool = True) -> dict:
    """Run one configuration in a fresh Python process (or in this one with ``isolate=False``)."""
    spec_path = workdir / f"{spec['id']}.spec.json"
    spec["result"] = str(workdir / f"{spec['id']}.result.json")
    spec_path.write_text(json.dumps(spec))
    if not isolate:
        _worker_main(str(spec_path))
        result = json.loads(Path(spec["result"]).read_text())
        if "peak_rss_method" in result:
            result["peak_rss_method"] += " (--no-isolate: peak of the whole benchmark process so far)"
        return result
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        if proc.returncode != 0 or not Path(spec["result"]).is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"error": f"worker exited with {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(Path(spec["result"]).read_text())


# -------------------------------------------------------------------------------------- main: setup
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="paper", help="comma-separated presets, random weights (default: paper)")
    parser.add_argument("--model", action="append", default=[], metavar="PATH", help="model file (repeatable)")
    parser.add_argument("--no-default-model", action="store_true",
                        help=f"leave out the shipped default model ({DEFAULT_MODEL_FILE.relative_to(ROOT)})")
    parser.add_argument("--backends", default="all", help=f"comma-separated, from {', '.join(BACKENDS)} (default: all)")
    parser.add_argument("--batches", default="1,16", help="comma-separated batch sizes (default: %(default)s)")
    parser.add_argument("--seconds", default="1,10,60", help="comma-separated audio lengths in s (default: %(default)s)")
    parser.add_argument("--ops", default="encode,decode")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads: torch and ONNX Runtime intra-op")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default: %(default)s)")
    parser.add_argument("--mode", choices=("api", "graph"), default="api",
                        help="api: the windowed numpy API; graph: one bare graph call on the whole input")
    parser.add_argument("--window-seconds", type=float, default=None,
                        help="window of the API mode, for every backend (default: the library's, 12 s)")
    parser.add_argument("--budget-seconds", type=float, default=120.0,
                        help="skip a configuration whose estimated time exceeds this (default: %(default)s)")
    parser.add_argument("--bundle-dir", default=str(DEFAULT_BUNDLE_DIR),
                        help="where bundles are exported and reused (default: %(default)s)")
    parser.add_argument("--bundle", action="append", default=[], metavar="BACKEND=PATH",
                        help="use this bundle for a runtime backend (e.g. ort-cpu-int8=PATH); it must hold the "
                             "same model weights")
    parser.add_argument("--verify-seconds", type=float, default=None,
                        help="length of the exporter's verification clip (default: the exporter's)")
    parser.add_argument("--matmul-size", type=int, default=2048, help="CPU matrix size of the rate measurement")
    parser.add_argument("--no-isolate", action="store_true",
                        help="run configurations in this process (faster; peak memory then is not per configuration)")
    parser.add_argument("--json", metavar="PATH", help="write every figure to this JSON file")
    parser.add_argument("--png", metavar="PATH", help="write a chart of x-real-time to this PNG file")
    parser.add_argument("--music", default=str(MUSIC), help="44.1 kHz clip tiled into the inputs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the presets' random weights")
    args = parser.parse_args(argv)
    args.batch_list = [int(b) for b in args.batches.split(",") if b.strip()]
    args.seconds_list = [float(s) for s in args.seconds.split(",") if s.strip()]
    args.op_list = [o.strip() for o in args.ops.split(",") if o.strip()]
    args.backend_list = list(BACKENDS) if args.backends == "all" else [b.strip() for b in args.backends.split(",")
                                                                       if b.strip()]
    unknown = [b for b in args.backend_list if b not in BACKENDS] + [o for o in args.op_list if o not in OPS]
    if unknown:
        parser.error(f"unknown backend or op {unknown}; backends: {', '.join(BACKENDS)}; ops: {', '.join(OPS)}")
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("need --threads >= 1, --repeats >= 1, --warmup >= 0")
    args.bundle_map = {}
    for item in args.bundle:
        name, _, path = item.partition("=")
        if name not in BACKENDS or BACKENDS[name]["kind"] != "runtime" or not path:
            parser.error(f"--bundle takes RUNTIME_BACKEND=PATH, got {item!r}")
        args.bundle_map[name] = path
    return args


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_backend(name: str, cuda: bool) -> str | None:
    """None when the libraries of ``name`` are present here, else why not (bundles are checked later)."""
    backend = BACKENDS[name]
    if backend["kind"] == "torch":
        try:
            import torch  # noqa: F401
        except ImportError as error:
            return f"torch is not installed ({error})"
        if backend["device"] == "cuda" and not cuda:
            return "no CUDA device (torch.cuda.is_available() is False)"
        return None
    from meltok_runtime.backends import BACKENDS as RUNTIME_BACKENDS
    from meltok_runtime.errors import MeltokError

    cls = RUNTIME_BACKENDS[backend["runtime"]]
    if backend["runtime"] == "trt":
        from meltok_runtime.backends import trt

        try:
            trt.import_tensorrt()
            trt.import_cudart()
        except MeltokError as error:
            return _short(error, 300)
        if not cuda:
            return "no CUDA device"
        return None
    try:
        cls.check_available(None, None)
    except MeltokError as error:
        return _short(error, 300)
    if backend["device"] == "cuda" and not cuda:
        return "onnxruntime has a CUDA provider but there is no CUDA device"
    return None


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def prepare_bundle(model, label: str, sha: str, backend_name: str, args) -> tuple[str | None, str | None]:
    """(bundle path, None) for a runtime backend, exporting into ``--bundle-dir`` or reusing; or (None, why not)."""
    from meltok_runtime.errors import MeltokError
    from meltok_runtime.manifest import load_manifest

    backend = BACKENDS[backend_name]
    if backend_name in args.bundle_map:
        path = Path(args.bundle_map[backend_name])
        try:
            manifest = load_manifest(path)
        except MeltokError as error:
            return None, f"bundle {path}: {_short(error)}"
        if manifest.model_sha256 != sha:
            return None, f"bundle {path} holds another model ({manifest.model_id}), not {label}"
        return str(path), None
    try:
        from meltok_export import onnx_export
        from meltok_export.bundle import export_bundle
    except Exception as error:  # noqa: BLE001 - the exporter (torch, onnx, onnxsim) may be missing
        return None, f"cannot export a bundle: meltok_export does not import ({type(error).__name__}: {error})"
    if backend["precision"] not in onnx_export.PRECISIONS:
        return None, (f"meltok_export has no {backend['precision']} precision (it offers "
                      f"{', '.join(onnx_export.PRECISIONS)}); pass --bundle {backend_name}=PATH to time one")
    max_batch = max(args.batch_list)
    if backend["engine"] == "trt" and args.mode == "api":
        max_seconds = args.window_seconds or 10.0
    else:
        max_seconds = max(max(args.seconds_list), args.window_seconds or 10.0)
    opt_seconds = min(10.0, max_seconds)
    key = f"{model.config.name}-{sha[:12]}-{backend['engine']}-{backend['precision']}-b{max_batch}-s{max_seconds:g}"
    path = Path(args.bundle_dir) / key
    if (path / "manifest.json").is_file():
        try:
            if load_manifest(path).model_sha256 == sha:
                return str(path), None
        except MeltokError:
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {} if args.verify_seconds is None else {"verify_seconds": args.verify_seconds}
    print(f"exporting {label} -> {path} ({backend['engine']}, {backend['precision']})", flush=True)
    try:
        export_bundle(model, path, engine=backend["engine"], precision=backend["precision"], max_seconds=max_seconds,
                      opt_seconds=opt_seconds, max_batch=max_batch, **extra)
    except Exception as error:  # noqa: BLE001 - listed as not available, with the reason
        return None, f"export failed: {type(error).__name__}: {_short(error, 300)}"
    return str(path), None


def model_sources(args) -> list[dict]:
    sources = [{"preset": p.strip(), "seed": args.seed} for p in args.presets.split(",") if p.strip()]
    sources += [{"file": str(Path(m).resolve())} for m in args.model]
    return sources


# ------------------------------------------------------------------------------------ main: figures
def _percentile(values, q):
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def graph_calls(args, seconds: float, hop: int, compression: int) -> int:
    """Graph calls per batch item: 1 in graph mode; the windows of the runtime's plan in API mode."""
    if args.mode == "graph":
        return 1
    from meltok_runtime.framing import padded_length, token_columns
    from meltok_runtime.windowing import (DEFAULT_CONTEXT_SECONDS, DEFAULT_WINDOW_SECONDS, count_windows,
                                          seconds_to_columns)

    columns = token_columns(padded_length(int(round(seconds * SAMPLE_RATE)), hop, compression), hop, compression)
    window = max(1, seconds_to_columns(args.window_seconds or DEFAULT_WINDOW_SECONDS, SAMPLE_RATE, hop, compression))
    context = seconds_to_columns(DEFAULT_CONTEXT_SECONDS, SAMPLE_RATE, hop, compression)
    return count_windows(columns, window, context)


def estimate_seconds(history: dict, key: tuple, work: float, flops: float, rate: float | None, calls: int) -> float:
    """Estimated wall time of ``calls`` calls on ``work`` = batch x seconds of audio."""
    per_work = history.get(key)
    if per_work is None:
        if not rate:
            return 0.0
        per_work = flops / (rate * FLOP_ESTIMATE_EFFICIENCY)
    return per_work * work * calls


def fmt(value, spec="{:.3g}", none="-"):
    if value is None:
        return none
    if isinstance(value, float) and value >= 1000 and spec == "{:.3g}":
        return f"{value:.0f}"
    return spec.format(value)


TABLE_HEADER = ["model", "op", "B", "sec", "backend", "calls", "median ms", "p90 ms", "RTF", "x real time", "vs eager",
                "floor ms", "x floor", "peak MB", "agree", "status"]


def table_rows(results: list[dict]) -> list[list[str]]:
    rows = []
    for r in results:
        ok = r["status"] == "ok"
        mem = r.get("gpu_peak_mb") if BACKENDS[r["backend"]]["device"] == "cuda" else r.get("peak_rss_mb")
        rows.append([r["model"], r["op"], str(r["batch"]), f"{r['seconds']:g}", r["backend"], fmt(r.get("calls"), "{}"),
                     fmt(r.get("median_ms")) if ok else "-", fmt(r.get("p90_ms")) if ok else "-",
                     fmt(r.get("rtf")) if ok else "-", fmt(r.get("x_realtime")) if ok else "-",
                     fmt(r.get("speedup_vs_eager"), "{:.2f}x") if ok else "-",
                     fmt(r.get("floor_ms")), fmt(r.get("x_floor"), "{:.1f}x") if ok else "-",
                     fmt(mem, "{:.0f}") if ok else "-",
                     fmt(r.get("token_agreement"), "{:.2%}") if ok else "-", r["status"]])
    return rows


def render_table(results: list[dict]) -> str:
    cost = _load_sibling("cost")
    return cost.format_table(table_rows(results), TABLE_HEADER, right=set(range(2, 15)) - {4})


def write_png(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in report["results"] if r["status"] == "ok"]
    models = list(dict.fromkeys(r["model"] for r in report["results"])) or ["(none)"]
    ops = list(dict.fromkeys(r["op"] for r in report["results"])) or list(OPS)
    fig, axes = plt.subplots(len(models), len(ops), figsize=(7 * len(ops), 4 * len(models)), squeeze=False)
    for i, model in enumerate(models):
        for j, op in enumerate(ops):
            ax = axes[i][j]
            rows = [r for r in results if r["model"] == model and r["op"] == op]
            configs = list(dict.fromkeys((r["batch"], r["seconds"]) for r in rows))
            backends = list(dict.fromkeys(r["backend"] for r in rows))
            width = 0.8 / max(1, len(backends))
            for k, backend in enumerate(backends):
                xs, ys = [], []
                for c, config in enumerate(configs):
                    match = [r for r in rows if r["backend"] == backend and (r["batch"], r["seconds"]) == config]
                    if match:
                        xs.append(c + (k - (len(backends) - 1) / 2) * width)
                        ys.append(match[0]["x_realtime"])
                ax.bar(xs, ys, width=width, label=backend)
            ax.set_xticks(range(len(configs)), [f"B{b} {s:g}s" for b, s in configs])
            ax.set_yscale("log")
            ax.axhline(1.0, color="k", linewidth=0.8, linestyle="--")
            ax.set_ylabel("x real time (higher is faster)")
            ax.set_title(f"{model}: {op}")
            if backends:
                ax.legend(fontsize=8)
    machine = report["machine"]
    fig.suptitle(f"MelTok speed, {machine.get('gpu') or machine['cpu']}, {report['args']['threads']} CPU threads, "
                 f"mode {report['args']['mode']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        sys.exit(_worker_main(argv[1]))
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    cost = _load_sibling("cost")
    from meltok.modelfile import weights_hash

    cuda = cuda_available()
    machine = cost.machine_description(args.threads)
    rates = cost.measure_rates(args.threads, cpu_size=args.matmul_size, repeats=3, cuda=cuda)
    if cuda:
        torch.cuda.empty_cache()  # the workers, not this process, should hold the GPU's memory
    report = {"machine": machine, "rates": rates, "models": {}, "availability": {}, "results": [],
              "args": {k: v for k, v in vars(args).items() if k not in ("bundle_map",)}}
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, {args.threads} threads"
          + (f", GPU {machine['gpu']}" if "gpu" in machine else "")
          + (f", load average {machine['load_average'][0]:.1f}" if "load_average" in machine else ""), flush=True)
    print("matmul rate: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in rates.items()), flush=True)

    library = {name: check_backend(name, cuda) for name in args.backend_list}
    sources = model_sources(args)
    if not args.no_default_model:
        if DEFAULT_MODEL_FILE.is_file():
            if str(DEFAULT_MODEL_FILE) not in [s.get("file") for s in sources]:
                sources.append({"file": str(DEFAULT_MODEL_FILE)})
        else:
            report["availability"]["default model"] = {
                "*": f"not available: no shipped default model at {DEFAULT_MODEL_FILE.relative_to(ROOT)}"}
    load_music(args.music)  # fail early on a missing or wrong clip; each worker reads it again
    history: dict = {}
    workdir_context = tempfile.TemporaryDirectory(prefix="meltok-speed-")
    workdir = Path(workdir_context.name)
    counter = 0
    try:
        for source in sources:
            if source.get("preset"):
                torch.manual_seed(source["seed"])
                from meltok import MelTok

                model = MelTok.from_config(source["preset"])
                label = f"{model.config.name}(random)"
            else:
                from meltok import MelTok

                model = MelTok.load(source["file"])
                label = f"{model.config.name}({Path(source['file']).stem})"
            sha = weights_hash(model.state_dict())
            flops = cost.graph_flops_per_second(model, seconds=10.0)
            report["models"][label] = {"source": source, "name": model.config.name, "model_sha256": sha,
                                       "params": cost.parameter_count(model),
                                       "flops_per_audio_second": flops}
            available, bundles = {}, {}
            for name in args.backend_list:
                reason = library[name]
                if reason is None and BACKENDS[name]["kind"] == "runtime":
                    bundles[name], reason = prepare_bundle(model, label, sha, name, args)
                available[name] = reason
            report["availability"][label] = {k: v for k, v in available.items()}
            report["models"][label]["bundles"] = bundles
            rows, columns = model.token_rows, None
            codebook = model.codebook_size
            hop, compression = model.hop_length, model.config.tokenizer.compression
            del model
            configs = sorted(((b, s) for b in args.batch_list for s in args.seconds_list), key=lambda c: c[0] * c[1])
            for batch, seconds in configs:
                calls = graph_calls(args, seconds, hop, compression)
                tokens_path = None
                reference = None  # (backend, tokens) of the first successful encode
                for op in args.op_list:
                    if op == "decode" and tokens_path is None:
                        from meltok_runtime.framing import padded_length, token_columns

                        columns = token_columns(padded_length(int(round(seconds * SAMPLE_RATE)), hop, compression),
                                                hop, compression)
                        rng = np.random.default_rng(0)
                        tokens_path = workdir / f"random-{counter}.npy"
                        np.save(tokens_path, rng.integers(0, codebook, (batch, rows, columns), dtype=np.int32))
                        token_source = "random (no encode ran)"
                    for name in args.backend_list:
                        if available[name] is not None:
                            continue
                        backend = BACKENDS[name]
                        counter += 1
                        entry = {"model": label, "op": op, "batch": batch, "seconds": seconds, "backend": name,
                                 "device": backend["device"], "mode": args.mode, "calls": calls}
                        work = batch * seconds
                        floor_rate = rates.get(backend["rate"])
                        graph_flops = flops[GRAPH_OF[op]] * work
                        entry["floor_ms"] = graph_flops / floor_rate * 1e3 if floor_rate else None
                        estimate = estimate_seconds(history, (label, name, op), work, flops[GRAPH_OF[op]],
                                                    floor_rate, args.warmup + args.repeats)
                        entry["estimated_s"] = estimate
                        if estimate > args.budget_seconds:
                            entry["status"] = (f"skipped: over budget (estimated {estimate:.0f} s > "
                                               f"{args.budget_seconds:g} s)")
                            report["results"].append(entry)
                            print(f"  {label} {op} B{batch} {seconds:g}s {name}: {entry['status']}", flush=True)
                            continue
                        spec = {"id": f"c{counter}", "backend": name, "model": source, "model_sha256": sha,
                                "op": op, "batch": batch, "seconds": seconds, "threads": args.threads,
                                "warmup": args.warmup, "repeats": args.repeats, "mode": args.mode,
                                "window_seconds": args.window_seconds, "bundle": bundles.get(name),
                                "music": args.music}
                        if op == "encode":
                            spec["tokens_out"] = str(workdir / f"tokens-{counter}.npy")
                        else:
                            spec["tokens_in"] = str(tokens_path)
                        timeout = 600 + 3 * max(args.budget_seconds, estimate)
                        started = time.perf_counter()
                        result = run_isolated(spec, workdir, timeout, isolate=not args.no_isolate)
                        entry["wall_s"] = time.perf_counter() - started
                        if "error" in result:
                            entry["status"] = f"failed: {_short(result['error'], 200)}"
                            entry["traceback"] = result.get("traceback")
                            report["results"].append(entry)
                            print(f"  {label} {op} B{batch} {seconds:g}s {name}: {entry['status']}", flush=True)
                            continue
                        times = result.pop("times_ms")
                        entry.update(result)
                        entry.update(status="ok", times_ms=times, median_ms=float(np.median(times)),
                                     p90_ms=_percentile(times, 90))
                        entry["rtf"] = entry["median_ms"] / 1e3 / work
                        entry["x_realtime"] = 1.0 / entry["rtf"]
                        entry["x_floor"] = entry["median_ms"] / entry["floor_ms"] if entry["floor_ms"] else None
                        entry["achieved_gflops"] = graph_flops / (entry["median_ms"] / 1e3) / 1e9
                        history[(label, name, op)] = entry["median_ms"] / 1e3 / work
                        if op == "encode":
                            tokens = np.load(spec["tokens_out"])
                            if reference is None:
                                reference = (name, tokens)
                                tokens_path = Path(spec["tokens_out"])
                                token_source = f"{name} encode"
                            if reference[1].shape == tokens.shape:
                                entry["token_agreement"] = float(np.mean(reference[1] == tokens))
                            entry["token_reference"] = reference[0]
                        else:
                            entry["tokens_from"] = token_source
                        report["results"].append(entry)
                        print(f"  {label} {op} B{batch} {seconds:g}s {name}: median {entry['median_ms']:.1f} ms, "
                              f"x{entry['x_realtime']:.2f} real time", flush=True)
        _speedups(report["results"])
    finally:
        workdir_context.cleanup()

    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    if args.png:
        write_png(report, args.png)
    print()
    machine = cost.machine_description(args.threads)  # the load at the end of the run
    report["machine"]["load_average_end"] = machine.get("load_average")
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, {args.threads} threads"
          + (f", GPU {machine['gpu']}" if "gpu" in machine else "") + "; matmul rate: "
          + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in rates.items()) + f"; mode {args.mode}")
    for when, info in (("start", report["machine"]), ("end", machine)):
        if cost.load_warning(info):
            print(f"{cost.load_warning(info)} (at the {when} of the run)")
    print(render_availability(report))
    print()
    print(render_table(report["results"]))
    return report


def _speedups(results: list[dict]) -> None:
    """``speedup_vs_eager`` = median of the device's PyTorch eager fp32 backend / median, same configuration."""
    index = {(r["model"], r["op"], r["batch"], r["seconds"], r["backend"]): r for r in results if r["status"] == "ok"}
    for r in results:
        if r["status"] != "ok":
            continue
        eager = index.get((r["model"], r["op"], r["batch"], r["seconds"], BACKENDS[r["backend"]]["eager"]))
        r["speedup_vs_eager"] = eager["median_ms"] / r["median_ms"] if eager else None


def render_availability(report: dict) -> str:
    lines = ["backends:"]
    for label, entries in report["availability"].items():
        for name, reason in entries.items():
            if name == "*":
                lines.append(f"  {label}: {reason}")
            else:
                lines.append(f"  {label} {name}: " + ("available" if reason is None else f"not available: {reason}"))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
