"""One configuration (model, backend, op, batch, length) timed in a fresh process: load, warm up, repeats."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .backends import BACKENDS
from meltok_runtime.deploy.memory import NvmlSampler, current_rss_mb, peak_rss_mb

ROOT = Path(__file__).resolve().parents[2]
MUSIC = ROOT / "tests" / "data" / "long_music.ogg"
SAMPLE_RATE = 44100
ITEM_OFFSET_SECONDS = 2.5  # batch item i starts i * 2.5 s into the (tiled) music


def load_music(path=MUSIC) -> np.ndarray:
    """The real music clip as mono float32 ``[N]`` at 44.1 kHz (the runtime's ``load_mono``)."""
    from meltok_runtime.io.audio import load_mono

    return load_mono(path, SAMPLE_RATE).samples


def make_audio(music: np.ndarray, batch: int, seconds: float) -> np.ndarray:
    """``[batch, seconds * 44100]`` float32: the music tiled to length, item i starting i * 2.5 s in."""
    length = int(round(seconds * SAMPLE_RATE))
    out = np.empty((batch, length), np.float32)
    for item in range(batch):
        start = int(item * ITEM_OFFSET_SECONDS * SAMPLE_RATE) % music.shape[0]
        out[item] = np.take(music, np.arange(start, start + length), mode="wrap")
    return out


def _torch_runner(spec: dict):
    """(encode_fn, decode_fn, timer, cleanup info) for a torch backend."""
    import torch

    from meltok import MelTok
    from meltok.modelfile import weights_hash
    from meltok_runtime.lengths import padded_length, token_columns
    from meltok_runtime.windowing import DEFAULT_CONTEXT_SECONDS, DEFAULT_WINDOW_SECONDS, count_windows

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
        return torch.autocast("cuda", dtype=torch.float16) if autocast else contextlib.nullcontext()

    windows = model.window_layout(spec.get("window_seconds") or DEFAULT_WINDOW_SECONDS, DEFAULT_CONTEXT_SECONDS)

    def calls(columns: int) -> int:
        """Graph calls for the batch: MelTok's own window plan (API mode), else one."""
        return model._chunks(spec["batch"]) * count_windows(columns, *windows) if spec["mode"] == "api" else 1

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
                timer=timer, gpu_peak=gpu_peak, to_numpy=to_numpy, close=lambda: None,
                encode_calls=lambda samples: calls(token_columns(padded_length(samples, hop, compression), hop,
                                                                 compression)),
                decode_calls=calls)


def _wall_timer(fn, arg):
    start = time.perf_counter()
    out = fn(arg)
    return (time.perf_counter() - start) * 1e3, out


def _runtime_runner(spec: dict):
    """The same for a ``meltok_runtime`` backend (no torch imported)."""
    from meltok_runtime import Codec
    from meltok_runtime.backends import BACKENDS as RUNTIME_BACKENDS
    from meltok_runtime.lengths import padded_length
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
        def encode_calls(samples):  # the codec's own window plan, within the bundle's limits
            return codec.encode_windows(samples, spec["batch"])

        def decode_calls(columns):
            return codec.decode_windows(columns, spec["batch"])
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
        encode_calls = decode_calls = lambda size: 1  # noqa: E731
    return dict(encode=encode, decode=decode, prepare_audio=prepare_audio, prepare_tokens=prepare_tokens,
                timer=_wall_timer, gpu_peak=None, to_numpy=lambda x: x, close=close, encode_calls=encode_calls,
                decode_calls=decode_calls)


def run_worker(spec: dict) -> dict:
    """Time one configuration: load, warm up, ``repeats`` timed calls; peak memory; outputs saved."""
    backend = BACKENDS[spec["backend"]]
    result = {"rss_start_mb": current_rss_mb()}
    t0 = time.perf_counter()
    sampler = NvmlSampler() if backend["device"] == "cuda" and backend["kind"] == "runtime" else None
    with sampler or contextlib.nullcontext():
        runner = _torch_runner(spec) if backend["kind"] == "torch" else _runtime_runner(spec)
        result["load_s"] = time.perf_counter() - t0
        result["rss_loaded_mb"] = current_rss_mb()
        if spec["op"] == "encode":
            audio = make_audio(load_music(spec["music"]), spec["batch"], spec["seconds"])
            result["calls"] = runner["encode_calls"](audio.shape[-1])
            arg, fn = runner["prepare_audio"](audio), runner["encode"]
        else:
            tokens = np.load(spec["tokens_in"])
            result["calls"] = runner["decode_calls"](tokens.shape[-1])
            arg, fn = runner["prepare_tokens"](tokens), runner["decode"]
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


def worker_main(spec_path: str) -> int:
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
        worker_main(str(spec_path))
        result = json.loads(Path(spec["result"]).read_text())
        if "peak_rss_method" in result:
            result["peak_rss_method"] += " (--no-isolate: peak of the whole benchmark process so far)"
        return result
    else:
        command = [sys.executable, "-m", "benchmarks.speed", "--worker", str(spec_path)]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        if proc.returncode != 0 or not Path(spec["result"]).is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"error": f"worker exited with {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(Path(spec["result"]).read_text())
