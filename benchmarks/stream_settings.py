"""Stream decoding: quality against compute for (context, step) settings, on held-out clips.

For each clip (``--clips``: audio files, e.g. the held-out ``.data/eval/{music,speech,effects}/*.flac``),
encodes it offline with the shipped bundle (ONNX Runtime CPU), decodes the tokens offline (the
reference) and through ``codec.stream_decoder(context_seconds=C, step_seconds=S, lookahead_seconds=L)``
for each ``C,S`` pair of ``--settings``, and reports per setting, over all clips:

- ``factor``: token columns each window decodes per column it keeps (``window / step``): the
  compute per second of audio against offline decoding's (about 1);
- ``latency``: the stream's algorithmic latency (``StreamDecoder.latency_seconds``);
- ``x rt``: audio seconds / wall seconds of the stream's decoding, one stream at a time with all
  ``--threads`` (the first line, ``offline``, is offline decoding: the ceiling): how many real-time
  streams the machine carries at best; ``cpu x rt``: audio seconds / (process CPU seconds / threads),
  what the same work gives where nothing else competes for the cores (spinning threads count: errs low);
- ``snr``: SNR of the streamed audio against offline decoding of the same tokens (median over clips, dB);
- ``mel vs off``: mel distance (``meltok.metrics.mel_distance``) of the stream against offline (median);
- ``mel vs in``: mel distance of the stream against the original audio (median), beside offline's own
  (the ``offline`` line): the codec's quality, which the stream settings may only change within noise;
- ``d mel``: the mean over clips of each clip's ``mel vs in`` minus its value with the first setting
  (today's default first), +- twice its standard error: the paired difference and its noise.

With ``--encode``, stream encoding instead: each clip's audio through ``codec.stream_encoder`` with each
setting, against offline ``encode``: ``tokens`` is the fraction of the stream's tokens equal to offline
encoding's (mean over clips, and its lowest), ``factor`` the encoder window's columns per kept column.

    python -m benchmarks.stream_settings --clips '.data/eval/*/*-0[0-5].flac' --threads 2
    python -m benchmarks.stream_settings --encode --settings 1.0:0.1,1.0:0.4,0.5:0.4 \\
        --clips '.data/eval/*/*-0[0-5].flac'
"""
from __future__ import annotations

import argparse
import glob
import json
import time
from pathlib import Path

import numpy as np

DEFAULT_SETTINGS = "1.0:0.1,1.0:0.4,0.5:0.4,0.25:0.4,1.0:0.8,0.5:0.8"


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    noise = float(np.sum((reference - estimate) ** 2, dtype=np.float64))
    power = float(np.sum(reference ** 2, dtype=np.float64))
    return float("inf") if noise == 0 else 10 * np.log10(power / noise)


def stream_decode(codec, tokens: np.ndarray, context: float, step: float, lookahead: float) -> tuple:
    """The stream's audio for ``tokens [rows, T']`` pushed 4 columns at a time, its decoder, wall seconds."""
    stream = codec.stream_decoder(lookahead_seconds=lookahead, context_seconds=context, step_seconds=step)
    started, cpu = time.perf_counter(), time.process_time()
    parts = [stream.push(tokens[:, i:i + 4]) for i in range(0, tokens.shape[1], 4)]
    audio = np.concatenate(parts + [stream.flush()])
    return audio, stream, time.perf_counter() - started, time.process_time() - cpu


def encode_agreement(codec, paths: list, settings: list, lookahead: float) -> list:
    """Per setting: the stream encoder's tokens against offline ``encode`` over ``paths`` (see the module docstring)."""
    from meltok_runtime.io.audio import load_audio, prepare_audio

    agreement = {setting: [] for setting in settings}
    for path in paths:
        audio, rate = load_audio(path)
        original = prepare_audio(audio[None], rate, codec.sample_rate)[0][0]
        offline = codec.encode(original)[0]
        block = 3 * codec.column_samples
        for context, step in settings:
            stream = codec.stream_encoder(lookahead_seconds=lookahead, context_seconds=context, step_seconds=step)
            parts = [stream.push(original[i:i + block]) for i in range(0, len(original), block)]
            streamed = np.concatenate(parts + [stream.flush()], axis=1)
            agreement[(context, step)].append((float((streamed == offline).mean()), stream.grid))
    rows = []
    print(f"# stream encoding, {len(paths)} clips, lookahead {lookahead} s: tokens equal to offline encoding's")
    print(f"{'setting':>9} {'cols L/S/R':>10} {'factor':>6} {'tokens':>7} {'lowest':>7}")
    for (context, step), items in agreement.items():
        grid = items[0][1]
        values = [value for value, _ in items]
        rows.append({"setting": f"{context}:{step}", "columns": [grid.left, grid.step, grid.right],
                     "factor": grid.window / grid.step, "tokens": float(np.mean(values)), "lowest": min(values)})
        print(f"{rows[-1]['setting']:>9} {'/'.join(map(str, rows[-1]['columns'])):>10} {rows[-1]['factor']:>6.1f} "
              f"{rows[-1]['tokens']:>7.1%} {rows[-1]['lowest']:>7.1%}")
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", required=True, help="Glob of audio files (quote it).")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help="CONTEXT:STEP pairs in seconds, comma-separated.")
    parser.add_argument("--lookahead", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--encode", action="store_true", help="Measure stream encoding's token agreement instead.")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    from meltok.metrics import mel_distance
    from meltok_runtime import Codec
    from meltok_runtime.io.audio import load_audio, prepare_audio

    paths = sorted(glob.glob(args.clips))
    if not paths:
        raise SystemExit(f"no file matches {args.clips!r}")
    settings = [tuple(float(x) for x in pair.split(":")) for pair in args.settings.split(",")]
    if args.encode:
        with Codec.open(backend="ort-cpu", threads=args.threads) as codec:
            return {"rows": encode_agreement(codec, paths, settings, args.lookahead), "clips": paths}
    rows = {"offline": []}
    with Codec.open(backend="ort-cpu", threads=args.threads) as codec:
        codec.decode(codec.encode(np.zeros(codec.sample_rate, np.float32)))  # warm up
        for path in paths:
            audio, rate = load_audio(path)
            original = prepare_audio(audio[None], rate, codec.sample_rate)[0][0]
            tokens = codec.encode(original)
            started, cpu = time.perf_counter(), time.process_time()
            offline = codec.decode(tokens)[0]
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            seconds = len(offline) / codec.sample_rate
            rows["offline"].append({"clip": path, "x_rt": seconds / wall, "cpu_x_rt": seconds * args.threads / cpu,
                                    "snr": float("inf"), "mel_vs_offline": 0.0,
                                    "mel_vs_input": mel_distance(original, offline)})
            for context, step in settings:
                streamed, stream, wall, cpu = stream_decode(codec, tokens[0], context, step, args.lookahead)
                grid = stream.grid
                rows.setdefault(f"{context}:{step}", []).append({
                    "clip": path, "context": context, "step": step, "columns": [grid.left, grid.step, grid.right],
                    "factor": grid.window / grid.step, "latency": stream.latency_seconds, "x_rt": seconds / wall,
                    "cpu_x_rt": seconds * args.threads / cpu,
                    "snr": snr_db(offline, streamed), "mel_vs_offline": mel_distance(offline, streamed),
                    "mel_vs_input": mel_distance(original, streamed)})
            print(f"{Path(path).name}: done", flush=True)
    summary = []
    baseline = np.array([item["mel_vs_input"] for item in rows[f"{settings[0][0]}:{settings[0][1]}"]])
    for name, items in rows.items():
        first = items[0]
        delta = np.array([item["mel_vs_input"] for item in items]) - baseline
        summary.append({"setting": name, "context": first.get("context"), "step": first.get("step"),
                        "columns": first.get("columns"), "factor": first.get("factor", 1.0),
                        "latency": first.get("latency"), "clips": len(items),
                        **{key: float(np.median([item[key] for item in items]))
                           for key in ("x_rt", "cpu_x_rt", "snr", "mel_vs_offline", "mel_vs_input")},
                        "d_mel": float(delta.mean()),
                        "d_mel_2se": float(2 * delta.std(ddof=1) / np.sqrt(len(delta))) if len(delta) > 1 else 0.0,
                        "clip_rows": items,
                        "snr_min": float(min(item["snr"] for item in items)),
                        "mel_vs_input_mean": float(np.mean([item["mel_vs_input"] for item in items]))})
    header = (f"{'setting':>9} {'cols L/S/R':>10} {'factor':>6} {'latency':>7} {'x rt':>6} {'cpu x rt':>8} "
              f"{'snr dB':>7} {'min':>6} {'mel vs off':>10} {'mel vs in':>9} {'mean':>6} {'d mel':>16}")
    print(f"# {len(paths)} clips ({args.clips}), lookahead {args.lookahead} s, {args.threads} threads; medians")
    print(header)
    print("-" * len(header))
    for row in summary:
        columns = "-" if row["columns"] is None else "/".join(map(str, row["columns"]))
        latency = "-" if row["latency"] is None else f"{row['latency']:.2f}s"
        delta = f"{row['d_mel']:+.4f} +-{row['d_mel_2se']:.4f}"
        print(f"{row['setting']:>9} {columns:>10} {row['factor']:>6.1f} {latency:>7} {row['x_rt']:>6.1f} "
              f"{row['cpu_x_rt']:>8.1f} {row['snr']:>7.1f} {row['snr_min']:>6.1f} {row['mel_vs_offline']:>10.3f} "
              f"{row['mel_vs_input']:>9.3f} {row['mel_vs_input_mean']:>6.3f} {delta:>16}")
    report = {"rows": summary, "clips": paths, "settings": vars(args) | {"json": str(args.json)}}
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
