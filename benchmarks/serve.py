"""``meltok-rt serve`` under concurrent clients: latency, time to first audio, throughput, errors.

Starts a real server process (``meltok-rt serve``, ONNX Runtime CPU, the shipped bundle) once per mode
(``batched``: ``--max-batch 16``; ``single``: ``--max-batch 1``) and drives it over loopback with 1, 4, 8
concurrent clients (``asyncio`` clients from ``meltok_runtime.serve.client``), each doing ``--requests``
times, on real audio (``--seconds`` of ``tests/data/long_music.ogg``, a different part per client):

- ``encode``: ``POST /v1/encode`` of the clip (raw f32 PCM);
- ``decode``: ``POST /v1/decode`` of its tokens;
- ``stream``: ``/v1/stream/decode`` of its tokens paced at real time (4 columns every 4 columns of
  audio-time), with the server's stream settings (``--stream-context-seconds``, ``--stream-step-seconds``),
  so ``first ms`` is the time to the first audio and ``x rt`` cannot exceed 1 per client.

``inproc`` does the same offline work through one in-process ``Codec`` from as many threads, no server.
The modes run one after the other for each operation and client count, ``--rounds`` times over (both
servers stay up), so they meet the same load on a shared machine; ``x rt`` is the median over rounds.
Columns: p50/p99 latency of one request (a stream: to its last audio), ``first ms`` (streams: p50 from the
first message to the first audio), ``added`` (streams: p99 of the time from sending the column that
completes the stream's first window to its first audio: what the server and the compute add to the
algorithmic latency), ``lag`` (streams: p99 of the time from the last column sent to the last audio,
the stream's algorithmic tail included: a stream that does not keep up falls behind and its lag grows
with its length), ``x rt`` (audio seconds processed / wall seconds, all clients together), ``cpu`` (CPU
milliseconds per second of audio: the server process's and the clients', or the in-process work's; less
noisy than wall time on a shared machine), ``client`` (the clients' part of it), ``errors``.

    python -m benchmarks.serve --clients 1,4,8 --seconds 5 --requests 2 --threads 2 --rounds 2
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
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


def start_server(max_batch: int, threads: int, max_wait_ms: float, options: tuple = ()
                 ) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [str(Path(sys.executable).with_name("meltok-rt")), "serve", "--port", str(port), "--backend", "ort-cpu",
               "--threads", str(threads), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
               *options]
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


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, all its threads (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summarise(latencies: list, firsts: list, audio_seconds: float, wall: float, errors: int, added=(), lags=(),
              cpu: float = 0.0, client_cpu: float = 0.0) -> dict:
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)

    def p99(values):
        return float(np.percentile(np.asarray(values) * 1000, 99)) if len(values) else None

    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "first_ms": float(np.median(firsts) * 1000) if firsts else None, "added_p99_ms": p99(added),
            "lag_p99_ms": p99(lags), "x_realtime": audio_seconds / wall if wall else 0.0, "errors": errors,
            "cpu_ms_per_s": 1000 * cpu / audio_seconds, "client_cpu_ms_per_s": 1000 * client_cpu / audio_seconds}


async def drive(url: str, op: str, clips: list, tokens: list, requests: int, first_columns: int = 0,
                server_pid: int | None = None) -> dict:
    """Every client does ``requests`` operations one after the other; all clients at once. Streams: the
    first audio needs ``first_columns`` columns (the stream's first window)."""
    from meltok_runtime.serve.client import AsyncClient

    column_seconds = 2048 / RATE
    latencies, firsts, added, lags, errors = [], [], [], [], 0

    async def client_work(index: int):
        nonlocal errors
        async with AsyncClient(url) as client:
            for _ in range(requests):
                started = time.monotonic()
                first, sent, last = [], [], []
                try:
                    if op == "encode":
                        await client.encode(clips[index], RATE)
                    elif op == "decode":
                        await client.decode(tokens[index], len(clips[index]))
                    else:
                        def on_chunk(_):
                            first.append(first[0] if first else time.monotonic())
                            last[:] = [time.monotonic()]

                        await client.stream_decode(tokens[index][0], pace_seconds=4 * column_seconds, on_chunk=on_chunk,
                                                   on_send=lambda columns: sent.append((columns, time.monotonic())))
                except Exception:  # counted; the benchmark goes on
                    errors += 1
                    continue
                latencies.append(time.monotonic() - started)
                if first:
                    firsts.append(first[0] - started)
                    completed = next(at for columns, at in sent if columns >= first_columns)
                    added.append(first[0] - completed)
                    lags.append(last[0] - sent[-1][1])

    started, client_cpu = time.monotonic(), time.process_time()
    server_cpu = process_cpu_seconds(server_pid) if server_pid else 0.0
    await asyncio.gather(*(client_work(i) for i in range(len(clips))))
    wall, client_cpu = time.monotonic() - started, time.process_time() - client_cpu
    server_cpu = (process_cpu_seconds(server_pid) if server_pid else 0.0) - server_cpu
    return summarise(latencies, firsts, requests * sum(len(c) for c in clips) / RATE, wall, errors, added, lags,
                     server_cpu + client_cpu, client_cpu)


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

    started, cpu = time.monotonic(), time.process_time()
    with ThreadPoolExecutor(len(clips)) as pool:
        list(pool.map(work, range(len(clips))))
    wall, cpu = time.monotonic() - started, time.process_time() - cpu
    return summarise(latencies, [], requests * sum(len(c) for c in clips) / RATE, wall, 0, cpu=cpu)


def print_table(rows: list) -> None:
    header = (f"{'mode':8} {'op':7} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'first ms':>8} {'added':>6} "
              f"{'lag':>6} {'x rt':>7} {'cpu':>5} {'client':>6} {'errors':>6}")
    print(header)
    print("-" * len(header))

    def ms(value):
        return "-" if value is None else f"{value:.0f}"

    for row in rows:
        print(f"{row['mode']:8} {row['op']:7} {row['clients']:>7} {row['p50_ms']:>8.0f} {row['p99_ms']:>8.0f} "
              f"{ms(row['first_ms']):>8} {ms(row['added_p99_ms']):>6} {ms(row['lag_p99_ms']):>6} "
              f"{row['x_realtime']:>7.2f} {row['cpu_ms_per_s']:>5.0f} {row['client_cpu_ms_per_s']:>6.0f} "
              f"{row['errors']:>6}")


def merge_rounds(results: list) -> dict:
    """One row from ``--rounds`` runs of the same cell: x rt the median, latencies the worst of the rounds'."""
    merged = {key: float(np.median([r[key] for r in results]))
              for key in ("x_realtime", "cpu_ms_per_s", "client_cpu_ms_per_s")}
    merged.update(errors=sum(r["errors"] for r in results), rounds=results)
    for key in ("p50_ms", "first_ms"):
        values = [r[key] for r in results if r[key] is not None]
        merged[key] = float(np.median(values)) if values else None
    for key in ("p99_ms", "added_p99_ms", "lag_p99_ms"):
        values = [r[key] for r in results if r[key] is not None]
        merged[key] = max(values) if values else None
    return merged


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,4,8", help="Concurrent clients, comma-separated.")
    parser.add_argument("--seconds", type=float, default=5.0, help="Seconds of audio per request.")
    parser.add_argument("--requests", type=int, default=2, help="Requests per client and operation.")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="ONNX Runtime threads.")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--modes", default="batched,single,inproc", help="batched, single (--max-batch 1), inproc.")
    parser.add_argument("--ops", default="encode,decode,stream")
    parser.add_argument("--rounds", type=int, default=1, help="Times each cell runs (modes interleaved).")
    parser.add_argument("--stream-context-seconds", type=float, default=None, help="The servers' stream context.")
    parser.add_argument("--stream-step-seconds", type=float, default=None, help="The servers' stream step.")
    parser.add_argument("--concurrent-calls", type=int, default=None, help="The servers' --concurrent-calls.")
    parser.add_argument("--json", type=Path, default=None, help="Write the rows as JSON here.")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.clients.split(",")]
    ops, modes = args.ops.split(","), args.modes.split(",")
    from meltok_runtime import Codec
    from meltok_runtime.serve.protocol import DECODE_OPTIONS, STREAM_CONTEXT_SECONDS, STREAM_STEP_SECONDS

    context = STREAM_CONTEXT_SECONDS if args.stream_context_seconds is None else args.stream_context_seconds
    step = STREAM_STEP_SECONDS if args.stream_step_seconds is None else args.stream_step_seconds
    options = ("--stream-context-seconds", str(context), "--stream-step-seconds", str(step),
               *(("--concurrent-calls", str(args.concurrent_calls)) if args.concurrent_calls else ()))
    clips = load_clips(max(counts), args.seconds)
    servers, rows = {}, []
    with Codec.open(backend="ort-cpu", threads=args.threads) as codec, contextlib.ExitStack() as stack:
        tokens = [codec.encode(clip) for clip in clips]
        stream = codec.stream_decoder(lookahead_seconds=DECODE_OPTIONS["lookahead_seconds"], context_seconds=context,
                                      step_seconds=step)
        first_columns = stream.grid.at(0).stop
        for mode in modes:
            if mode != "inproc":
                process, url = start_server(16 if mode == "batched" else 1, args.threads, args.max_wait_ms, options)
                stack.callback(lambda p=process: (p.terminate(), p.wait(60)))
                servers[mode] = url, process.pid
        for op in ops:
            for count in counts:
                results = {mode: [] for mode in modes if not (mode == "inproc" and op == "stream")}
                for _ in range(args.rounds):
                    for mode in results:
                        if mode == "inproc":
                            result = in_process(codec, op, clips[:count], tokens[:count], args.requests)
                        else:
                            url, pid = servers[mode]
                            result = asyncio.run(drive(url, op, clips[:count], tokens[:count], args.requests,
                                                       first_columns, pid))
                        results[mode].append(result)
                for mode, runs in results.items():
                    rows.append({"mode": mode, "op": op, "clients": count, **merge_rounds(runs)})
    rows.sort(key=lambda row: (modes.index(row["mode"]), ops.index(row["op"])))
    print(f"# streams: context {context} s, step {step} s, lookahead {DECODE_OPTIONS['lookahead_seconds']} s: "
          f"{stream.grid.left}/{stream.grid.step}/{stream.grid.right} columns, compute factor "
          f"{stream.grid.window / stream.grid.step:.2f}, algorithmic latency {stream.latency_seconds * 1000:.0f} ms, "
          f"first audio after {first_columns} columns")
    print_table(rows)
    report = {"rows": rows, "settings": vars(args) | {"json": str(args.json)}}
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
