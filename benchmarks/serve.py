"""``meltok-rt serve`` under concurrent clients: latency, time to first audio, throughput, errors.

Starts a real server process (``meltok-rt serve``, ONNX Runtime CPU, the shipped bundle) once per mode
(``batched``: ``--max-batch 16``; ``single``: ``--max-batch 1``) and drives it over loopback with 1, 4, 8
concurrent clients (``asyncio`` clients from ``meltok_runtime.serve.client``), each doing ``--requests``
times, on real audio (``--seconds`` of ``tests/data/long_music.ogg``, a different part per client):

- ``encode``: ``POST /v1/encode`` of the clip (raw f32 PCM);
- ``decode``: ``POST /v1/decode`` of its tokens;
- ``stream``: ``/v1/stream/decode`` of its tokens paced at real time (4 columns every 4 columns of
  audio-time), so ``first ms`` is the time to the first audio and ``x rt`` cannot exceed 1 per client.

``inproc`` does the same offline work through one in-process ``Codec`` from as many threads, no server.
Columns: p50/p99 latency of one request (a stream: to its last audio), ``first ms`` (streams: p50 from the
first message to the first audio), ``x rt`` (audio seconds processed / wall seconds, all clients
together), ``errors``.

    python -m benchmarks.serve --clients 1,4,8 --seconds 5 --requests 2 --threads 2
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MUSIC = ROOT / "tests" / "data" / "long_music.ogg"
RATE = 44100


def load_clips(count: int, seconds: float) -> list[np.ndarray]:
    """``count`` different ``seconds``-long parts of real music (wrapping around), mono float32 at 44.1 kHz."""
    from meltok_runtime.io.audio import load_audio, prepare_audio

    audio, rate = load_audio(MUSIC)
    music = prepare_audio(audio[None], rate)[0][0]
    length = int(seconds * RATE)
    starts = [(i * RATE) % max(1, len(music) - length) for i in range(count)]
    return [music[start:start + length] for start in starts]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(max_batch: int, threads: int, max_wait_ms: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [str(Path(sys.executable).with_name("meltok-rt")), "serve", "--port", str(port), "--backend", "ort-cpu",
               "--threads", str(threads), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).json().get("ready"):
                return process, url
        except (httpx.HTTPError, ValueError):
            pass
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {process.stderr.read().decode()}")
        time.sleep(0.2)
    process.kill()
    raise TimeoutError("the server did not become ready in 120 s")


def summarise(latencies: list, firsts: list, audio_seconds: float, wall: float, errors: int) -> dict:
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "first_ms": float(np.median(firsts) * 1000) if firsts else None,
            "x_realtime": audio_seconds / wall if wall else 0.0, "errors": errors}


async def drive(url: str, op: str, clips: list, tokens: list, requests: int) -> dict:
    """Every client does ``requests`` operations one after the other; all clients at once."""
    from meltok_runtime.serve.client import AsyncClient

    column_seconds = 2048 / RATE
    latencies, firsts, errors = [], [], 0

    async def client_work(index: int):
        nonlocal errors
        async with AsyncClient(url) as client:
            for _ in range(requests):
                started = time.monotonic()
                first = []
                try:
                    if op == "encode":
                        await client.encode(clips[index], RATE)
                    elif op == "decode":
                        await client.decode(tokens[index], len(clips[index]))
                    else:
                        await client.stream_decode(tokens[index][0], pace_seconds=4 * column_seconds,
                                                   on_chunk=lambda _: first.append(time.monotonic()) if not first
                                                   else None)
                except Exception:  # counted; the benchmark goes on
                    errors += 1
                    continue
                latencies.append(time.monotonic() - started)
                if first:
                    firsts.append(first[0] - started)

    started = time.monotonic()
    await asyncio.gather(*(client_work(i) for i in range(len(clips))))
    wall = time.monotonic() - started
    return summarise(latencies, firsts, requests * sum(len(c) for c in clips) / RATE, wall, errors)


def in_process(codec, op: str, clips: list, tokens: list, requests: int) -> dict:
    """The same offline work through one in-process Codec, one thread per client."""
    latencies = []

    def work(index: int):
        for _ in range(requests):
            started = time.monotonic()
            if op == "encode":
                codec.encode(clips[index])
            else:
                codec.decode(tokens[index], num_samples=len(clips[index]))
            latencies.append(time.monotonic() - started)

    started = time.monotonic()
    with ThreadPoolExecutor(len(clips)) as pool:
        list(pool.map(work, range(len(clips))))
    wall = time.monotonic() - started
    return summarise(latencies, [], requests * sum(len(c) for c in clips) / RATE, wall, 0)


def print_table(rows: list) -> None:
    header = f"{'mode':8} {'op':7} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'first ms':>8} {'x rt':>7} {'errors':>6}"
    print(header)
    print("-" * len(header))
    for row in rows:
        first = "-" if row["first_ms"] is None else f"{row['first_ms']:.0f}"
        print(f"{row['mode']:8} {row['op']:7} {row['clients']:>7} {row['p50_ms']:>8.0f} {row['p99_ms']:>8.0f} "
              f"{first:>8} {row['x_realtime']:>7.2f} {row['errors']:>6}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,4,8", help="Concurrent clients, comma-separated.")
    parser.add_argument("--seconds", type=float, default=5.0, help="Seconds of audio per request.")
    parser.add_argument("--requests", type=int, default=2, help="Requests per client and operation.")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="ONNX Runtime threads.")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--modes", default="batched,single,inproc", help="batched, single (--max-batch 1), inproc.")
    parser.add_argument("--ops", default="encode,decode,stream")
    parser.add_argument("--json", type=Path, default=None, help="Write the rows as JSON here.")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.clients.split(",")]
    ops, modes = args.ops.split(","), args.modes.split(",")
    from meltok_runtime import Codec

    clips = load_clips(max(counts), args.seconds)
    rows = []
    with Codec.open(backend="ort-cpu", threads=args.threads) as codec:
        tokens = [codec.encode(clip) for clip in clips]
        for mode in modes:
            if mode == "inproc":
                for op in [op for op in ops if op != "stream"]:
                    for count in counts:
                        result = in_process(codec, op, clips[:count], tokens[:count], args.requests)
                        rows.append({"mode": mode, "op": op, "clients": count, **result})
                continue
            process, url = start_server(16 if mode == "batched" else 1, args.threads, args.max_wait_ms)
            try:
                for op in ops:
                    for count in counts:
                        result = asyncio.run(drive(url, op, clips[:count], tokens[:count], args.requests))
                        rows.append({"mode": mode, "op": op, "clients": count, **result})
            finally:
                process.terminate()
                process.wait(60)
    print_table(rows)
    report = {"rows": rows, "settings": vars(args) | {"json": str(args.json)}}
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
