"""``meltok-rt bench``: latency and throughput of a bundle on the backends this machine has.

For each backend (``auto``: every backend that can run the bundle here; one that cannot is a row
saying why, never a figure), ``Codec.encode`` and ``Codec.decode`` (numpy in and out, windowed as
users run them) at batch 1 and ``batch`` for each length of ``seconds``: warm-up, then ``repeats``
timed calls (median and p90 latency, x real time = audio seconds processed per second). Then a
decoder stream fed ``push_seconds`` of tokens at a time: the wall time until its first audio, and x
real time over ``stream_seconds``. Peak memory: the process's peak RSS (all rows together) and, for
GPU backends, device memory sampled with NVML where ``nvidia-ml-py`` is installed. The report
carries doctor's description of the machine. A configuration whose estimated time exceeds
``budget_seconds`` is listed as not run.

The input is the bundle's verification clip (real audio, stored at export), tiled to length.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from meltok_runtime.backends import AUTO_ORDER, availability
from meltok_runtime.errors import MeltokError, SettingsError
from meltok_runtime.io.atomic import atomic_output
from meltok_runtime.manifest import load_manifest

from .doctor import diagnose
from .memory import NvmlSampler, peak_rss_mb

GPU_BACKENDS = ("trt", "ort-cuda")


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    seconds: tuple = (1.0, 10.0, 60.0)
    batch: int = 8
    repeats: int = 3
    warmup: int = 1
    stream_seconds: float = 10.0
    push_seconds: float = 0.2
    threads: int | None = None
    budget_seconds: float = 120.0

    def __post_init__(self):
        if not self.seconds or min(self.seconds) <= 0 or self.batch < 1 or self.repeats < 1 or self.warmup < 0:
            raise SettingsError(f"bench needs positive lengths, batch >= 1, repeats >= 1 and warm-up >= 0; got "
                                f"{self.seconds}, {self.batch}, {self.repeats}, {self.warmup}")


def bench_audio(bundle: Path, manifest, seconds: float, batch: int) -> tuple[np.ndarray, str]:
    """``[batch, seconds * rate]`` float32 from the bundle's verification clip (item i starts i/4 of the
    clip later), or a chirp where the bundle has none; and what it is."""
    rate = manifest.sample_rate
    if manifest.verification:
        from meltok_runtime.engines.reference import load_reference

        clip = load_reference(bundle, manifest)[0][0]
        source = f"the bundle's verification clip ({manifest.verification.get('source')}), tiled"
    else:
        t = np.arange(4 * rate) / rate
        clip = (0.3 * np.sin(2 * np.pi * (100 + 400 * t) * t)).astype(np.float32)
        source = "a 4 s chirp, tiled (the bundle holds no verification clip)"
    length = int(round(seconds * rate))
    rows = [np.take(clip, np.arange(i * clip.size // 4, i * clip.size // 4 + length), mode="wrap") for i in range(batch)]
    return np.stack(rows).astype(np.float32), source


def _timed(fn, arg, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn(arg)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - start)
    return times


def _stream_row(codec, tokens: np.ndarray, settings: BenchSettings) -> dict:
    """A decoder stream fed ``push_seconds`` of tokens at a time: time to first audio, x real time."""
    columns = max(1, int(round(settings.push_seconds * codec.sample_rate / codec.hop_length / codec.compression)))
    stream = codec.stream_decoder()
    start, first, produced = time.perf_counter(), None, 0
    for offset in range(0, tokens.shape[-1], columns):
        audio = stream.push(tokens[..., offset:offset + columns])
        produced += audio.shape[-1]
        if first is None and audio.shape[-1]:
            first = time.perf_counter() - start
    tail = stream.flush().shape[-1]
    total = time.perf_counter() - start
    produced += tail
    if first is None and tail:  # a stream shorter than one window gives its audio at the flush
        first = total
    return {"first_audio_ms": None if first is None else first * 1e3, "push_columns": columns,
            "x_realtime": produced / codec.sample_rate / total}


def _backend_rows(bundle: Path, manifest, name: str, settings: BenchSettings) -> list[dict]:
    from meltok_runtime import Codec

    rows, rate_of = [], {}  # op -> audio seconds per wall second, from the last row: the budget estimate
    with Codec.open(bundle, backend=name, threads=settings.threads) as codec:
        for seconds in sorted(settings.seconds):
            for batch in sorted({1, settings.batch}):
                audio, _ = bench_audio(bundle, manifest, seconds, batch)
                for op in ("encode", "decode"):
                    row = {"backend": name, "op": op, "batch": batch, "seconds": seconds}
                    estimate = (settings.warmup + settings.repeats) * batch * seconds / rate_of[op] \
                        if op in rate_of else 0.0
                    if estimate > settings.budget_seconds:
                        rows.append({**row, "status": f"not run: estimated {estimate:.0f} s, over the budget of "
                                                      f"{settings.budget_seconds:.0f} s"})
                        continue
                    if op == "encode":
                        times = _timed(codec.encode, audio, settings.warmup, settings.repeats)
                    else:
                        tokens = codec.encode(audio)
                        times = _timed(codec.decode, tokens, settings.warmup, settings.repeats)
                    median = float(np.median(times))
                    rate_of[op] = batch * seconds / median
                    rows.append({**row, "status": "ran", "median_ms": median * 1e3,
                                 "p90_ms": float(np.percentile(times, 90)) * 1e3, "x_realtime": rate_of[op]})
        if settings.stream_seconds > 0:
            tokens = codec.encode(bench_audio(bundle, manifest, settings.stream_seconds, 1)[0])
            rows.append({"backend": name, "op": "stream-decode", "batch": 1, "seconds": settings.stream_seconds,
                         "status": "ran", **_stream_row(codec, tokens, settings)})
    return rows


def run_bench(bundle=None, backends=("auto",), settings: BenchSettings = BenchSettings()) -> dict:
    """The report: machine, bundle, settings, and one row per configuration (``status`` "ran" or "not run: ...")."""
    from meltok_runtime.codec import default_bundle

    bundle = Path(bundle) if bundle is not None else default_bundle()
    manifest = load_manifest(bundle)
    doctor = diagnose(bundle)
    can_run = availability(bundle, manifest)
    names = [name for name in AUTO_ORDER if "auto" in backends or name in backends]
    rows, memory = [], {}
    for name in names:
        reason = can_run[name]
        if reason is not None:
            rows.append({"backend": name, "status": f"not run: {reason}"})
            continue
        sampler = NvmlSampler() if name in GPU_BACKENDS else None
        try:
            if sampler is not None:
                with sampler:
                    rows += _backend_rows(bundle, manifest, name, settings)
                memory[name] = dict(zip(("gpu_peak_mb", "gpu_method"), sampler.peak))
            else:
                rows += _backend_rows(bundle, manifest, name, settings)
        except MeltokError as error:
            rows.append({"backend": name, "status": f"not run: {error}"})
    rss, method = peak_rss_mb()
    return {"machine": doctor["machine"], "gpu": doctor["gpu"], "bundle": str(bundle), "model_id": manifest.model_id,
            "audio": bench_audio(bundle, manifest, 0.01, 1)[1], "settings": dataclasses.asdict(settings),
            "rows": rows, "memory": {"peak_rss_mb": rss, "rss_method": f"{method}, whole process", **memory},
            "not_run": sum(not row["status"].startswith("ran") for row in rows)}


def render(report: dict) -> str:
    """The table, then memory and a line on rows that did not run."""
    lines = [f"{report['bundle']} ({report['model_id']}); GPU: {report['gpu']}; audio: {report['audio']}",
             f"{'backend':9} {'op':13} {'batch':>5} {'seconds':>7} {'median ms':>10} {'p90 ms':>9} {'x real time':>11}  "
             "first audio ms / status"]
    for row in report["rows"]:
        if row["status"] != "ran":
            lines.append(f"{row['backend']:9} {row.get('op', '-'):13} {row.get('batch', '-'):>5} "
                         f"{row.get('seconds', '-'):>7} {'-':>10} {'-':>9} {'-':>11}  {row['status']}")
            continue
        first = row.get("first_audio_ms")
        lines.append(f"{row['backend']:9} {row['op']:13} {row['batch']:>5} {row['seconds']:>7g} "
                     f"{row.get('median_ms', float('nan')):>10.1f} {row.get('p90_ms', float('nan')):>9.1f} "
                     f"{row['x_realtime']:>11.2f}  " + (f"{first:.1f}" if first is not None else ""))
    memory = report["memory"]
    lines.append(f"peak RSS {memory['peak_rss_mb']:.0f} MB ({memory['rss_method']})" + "".join(
        f"; {name} GPU {value['gpu_peak_mb']:.0f} MB" if isinstance(value, dict) and value.get("gpu_peak_mb") else ""
        for name, value in memory.items()))
    if report["not_run"]:
        lines.append(f"{report['not_run']} row(s) did not run (see their status); they are not results")
    return "\n".join(lines)


def write_report(report: dict, path: Path) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
