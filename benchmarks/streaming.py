"""Streaming latency, speed and agreement with offline processing, on real music and speech.

For each model, lookahead and push size, streams the same real audio (``tests/data/long_music.ogg``,
first ``--seconds``, then ``tests/data/speech.flac``) through ``stream_encoder`` (pushes of ``k``
columns of audio) and its offline tokens through ``stream_decoder`` (pushes of ``k`` columns), and
reports per operation:

- ``first ms``: time to the first output after the first push, on a simulated real-time source
  (push ``i`` arrives ``i * k`` columns of audio-time after push 0 for decoding, once its audio is
  captured for encoding; a push waits for the previous one to finish), so it includes the
  algorithmic latency (lookahead, fade, receptive field) and the compute;
- ``ms/push``: median and largest compute time of one push;
- ``x real time``: audio duration / total wall-clock compute (the reciprocal of the real-time factor);
  ``cpu x rt``: audio duration / (process CPU seconds / threads), what the same work gives on a machine
  where nothing else competes for the cores (spinning worker threads count, so it errs low);
- ``agreement``: encoding: tokens equal to offline ``encode``; decoding: SNR of the streamed audio
  against offline ``decode`` of the same tokens (``exact`` when a time-local model reproduces it).

Models (``--models``): ``default`` (the shipped bundle, ``meltok_runtime`` with ONNX Runtime CPU),
``paper`` (random weights, PyTorch eager: exporting the paper model takes longer than the measurement),
and ``edge-local`` (the time-local edge variant, random weights, PyTorch; its streams must equal
offline results). Threads: ``--threads`` (ONNX Runtime intra-op threads; ``torch.set_num_threads``).

    python benchmarks/streaming.py --threads 2 --json streaming.json
    python benchmarks/streaming.py --models paper --lookaheads 0.2 --pushes 4,16 --seconds 10
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MUSIC, SPEECH = ROOT / "tests" / "data" / "long_music.ogg", ROOT / "tests" / "data" / "speech.flac"


def load_clip(seconds: float) -> np.ndarray:
    """``seconds`` of real music followed by real speech, mono float32 at 44.1 kHz."""
    from meltok_runtime.io.audio import load_audio, prepare_audio

    parts = []
    for path, limit in ((MUSIC, seconds), (SPEECH, None)):
        audio, rate = load_audio(path)
        mono = prepare_audio(audio[None], rate)[0][0]
        parts.append(mono if limit is None else mono[:int(limit * 44100)])
    return np.concatenate(parts)


def open_model(name: str, threads: int):
    """A codec with the stream API: the shipped bundle in the runtime, or a seeded PyTorch preset."""
    if name == "default":
        from meltok_runtime import Codec

        return Codec.open(backend="ort-cpu", threads=threads), "ort-cpu, shipped bundle"
    import torch

    from meltok import MelTok

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return MelTok.from_config(name), "torch eager, random weights"


def simulate(compute: list[float], outputs: list[int], arrival_step: float, captured: bool) -> float:
    """Seconds from the first push's arrival to the first output on a real-time source."""
    finish = 0.0
    for index, (seconds, produced) in enumerate(zip(compute, outputs)):
        arrival = (index + captured) * arrival_step
        finish = max(finish, arrival) + seconds
        if produced:
            return finish - captured * arrival_step
    return float("nan")


def run_stream(stream, pieces) -> tuple[list, list[float], float]:
    """Outputs of every push and the flush, wall seconds of each, and the process CPU seconds of all."""
    outputs, compute = [], []
    cpu = time.process_time()
    for piece in [*pieces, None]:
        start = time.perf_counter()
        outputs.append(stream.flush() if piece is None else stream.push(piece))
        compute.append(time.perf_counter() - start)
    return outputs, compute, time.process_time() - cpu


def measure(codec, op: str, clip, tokens, offline, lookahead: float, push: int, context: float,
            threads: int) -> dict:
    column = codec.hop_length * codec.compression
    if op == "encode":
        stream = codec.stream_encoder(lookahead_seconds=lookahead, context_seconds=context)
        pieces = [clip[i:i + push * column] for i in range(0, len(clip), push * column)]
        outputs, compute, cpu = run_stream(stream, pieces)
        result = np.concatenate(outputs, axis=1)
        agreement = float((result == tokens).mean()) if result.shape == tokens.shape else float("nan")
        sizes = [o.shape[1] for o in outputs]
    else:
        stream = codec.stream_decoder(lookahead_seconds=lookahead, context_seconds=context)
        pieces = [tokens[:, i:i + push] for i in range(0, tokens.shape[1], push)]
        outputs, compute, cpu = run_stream(stream, pieces)
        result = np.concatenate(outputs)
        error = np.sum((result - offline) ** 2)
        agreement = float("inf") if error == 0 else float(10 * np.log10(np.sum(offline ** 2) / error))
        sizes = [len(o) for o in outputs]
    first = simulate(compute, sizes, push * column / codec.sample_rate, captured=op == "encode")
    busy = [c for c, s in zip(compute, sizes) if s] or compute
    return {"op": op, "lookahead": lookahead, "push": push, "context": context, "first_ms": 1000 * first,
            "median_ms": 1000 * float(np.median(busy)), "max_ms": 1000 * float(np.max(compute)),
            "x_real_time": len(clip) / codec.sample_rate / sum(compute),
            "cpu_x_real_time": len(clip) / codec.sample_rate / (cpu / threads), "agreement": agreement,
            "exact": bool(stream.exact), "latency_s": stream.latency_seconds}


def agreement_text(row: dict) -> str:
    if row["op"] == "encode":
        return f"{100 * row['agreement']:.1f}% tokens" + (" (exact)" if row["exact"] else "")
    snr = row["agreement"]
    return ("identical" if snr == float("inf") else f"{snr:.1f} dB SNR") + (" (exact)" if row["exact"] else "")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="default,paper,edge-local")
    parser.add_argument("--lookaheads", default="0.1,0.2,0.5,1.0")
    parser.add_argument("--pushes", default="1,4,16", help="push sizes in token columns")
    parser.add_argument("--ops", default="decode,encode")
    parser.add_argument("--contexts", default="0.5", help="left context in seconds")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of music before the speech")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    clip = load_clip(args.seconds)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {len(clip) / 44100:.1f} s of real music + speech, {args.threads} threads, "
          f"load average {load:.1f} on {os.cpu_count()} cores")
    report = {"seconds": len(clip) / 44100, "threads": args.threads, "load_average": load, "models": {}}
    for name in args.models.split(","):
        codec, how = open_model(name, args.threads)
        tokens = codec.encode(clip)[0]
        offline = codec.decode(tokens)[0]
        rows = []
        print(f"\n{name} ({how})")
        print(f"{'op':7} {'context':>7} {'lookahead':>9} {'push':>4} {'latency':>8} {'first ms':>9} {'ms/push':>8} "
              f"{'max ms':>8} {'x real time':>11} {'cpu x rt':>8}  agreement with offline")
        print("-" * 113)
        grid = [(op, context, lookahead, push) for op in args.ops.split(",")
                for context in map(float, args.contexts.split(","))
                for lookahead in map(float, args.lookaheads.split(",")) for push in map(int, args.pushes.split(","))]
        for op, context, lookahead, push in grid:
            row = measure(codec, op, clip, tokens, offline, lookahead, push, context, args.threads)
            rows.append(row)
            print(f"{op:7} {context:>6.1f}s {lookahead:>8.1f}s {push:>4} {row['latency_s']:>7.2f}s "
                  f"{row['first_ms']:>9.0f} {row['median_ms']:>8.1f} {row['max_ms']:>8.1f} "
                  f"{row['x_real_time']:>11.1f} {row['cpu_x_real_time']:>8.1f}  {agreement_text(row)}", flush=True)
        report["models"][name] = {"how": how, "rows": rows}
        if hasattr(codec, "close"):
            codec.close()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
