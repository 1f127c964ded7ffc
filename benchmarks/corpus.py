"""Corpus tokenization throughput, side by side in one run: hours of audio tokenized per hour.

Modes, on the same files (picked round-robin from the given folders until ``--minutes`` of audio):

- ``loop``: a plain shell-style loop, one ``meltok-rt encode FILE -o FILE.mtok`` process per file;
- ``workers-1`` / ``workers-2``: ``meltok-rt tokenize`` with 1 and 2 encoder workers;
- ``ray``: the same job on a local Ray instance (its start-up is included in the time).

Also: the share of the ``workers-1`` wall time spent writing the dataset (Parquet shards, journal,
``dataset.json``), peak memory per worker, and whether every mode gave the loop's tokens.

    python3 benchmarks/corpus.py /usr/share/games/wesnoth /usr/share/games/hedgewars --minutes 60
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from meltok_runtime.dataset.job import tokenize
from meltok_runtime.dataset.reader import open_dataset, pyarrow_modules
from meltok_runtime.dataset.writer import DatasetWriter
from meltok_runtime.io.formats import AUDIO_SUFFIXES
from meltok_runtime.io.tokenfile import read_tokens

MODES = ("loop", "workers-1", "workers-2", "ray")


def pick_files(roots, seconds: float) -> list[tuple[str, Path, float]]:
    """``(id, path, duration)`` of readable audio files of 0.1 s or more, one from each root in turn, until ``seconds``."""
    queues = []
    for root in map(Path, roots):
        found = []
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()):
            try:
                info = sf.info(path)
            except (sf.SoundFileError, RuntimeError):
                continue
            if info.frames >= 0.1 * info.samplerate:  # the job refuses clips under one token column
                found.append((f"{root.name}/{path.relative_to(root).as_posix()}", path, info.frames / info.samplerate))
        queues.append(found)
    picked, total = [], 0.0
    while total < seconds and any(queues):
        for queue in queues:
            if queue and total < seconds:
                picked.append(queue.pop(0))
                total += picked[-1][2]
    return picked


LOOP_CLI = ("import atexit, sys\n"
            "from meltok_runtime.dataset.items import peak_rss_mb\n"
            "atexit.register(lambda: print(f'peak_rss_mb {peak_rss_mb()}', file=sys.stderr))\n"
            "from meltok_runtime.cli.main import main\n"
            "main()")


def run_loop(files, folder: Path) -> dict:
    """One ``meltok-rt encode`` process per file (each reports its peak RSS on exit)."""
    folder.mkdir()
    started, peak = time.perf_counter(), 0.0
    for index, (_, path, _) in enumerate(files):
        done = subprocess.run([sys.executable, "-c", LOOP_CLI, "encode", str(path), "-o", str(folder / f"{index}.mtok")],
                              check=True, capture_output=True, text=True)
        peak = max(peak, float(done.stderr.strip().splitlines()[-1].split()[-1]))
    return {"wall": time.perf_counter() - started, "peak_rss_mb": peak}


def run_job(manifest: Path, output: Path, **options) -> dict:
    """One ``tokenize`` job; the time spent in the dataset writer is measured by wrapping its methods."""
    spent, last = [0.0], []
    originals = {"commit": DatasetWriter.commit}  # close() commits too

    def timed(method):
        def wrapper(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - started
        return wrapper

    for name, method in originals.items():
        setattr(DatasetWriter, name, timed(method))
    try:
        started = time.perf_counter()
        summary = tokenize([manifest], output, progress=last.append, **options)
        wall = time.perf_counter() - started
    finally:
        for name, method in originals.items():
            setattr(DatasetWriter, name, method)
    return {"wall": wall, "writer": spent[0], "failed": summary["counts"]["failed"],
            "peak_rss_mb": last[-1].worker_peak_rss_mb if last else float("nan")}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", help="folders of real audio (searched recursively)")
    parser.add_argument("--minutes", type=float, default=60.0, help="audio to tokenize per mode")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--bundle", default=None, help="bundle folder (default: the shipped one)")
    parser.add_argument("--workdir", default=None, help="folder for outputs (default: a temporary one, removed)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    pyarrow_modules()  # imported once here, not inside the first mode's writer time
    modes = args.modes.split(",")
    files = pick_files(args.roots, args.minutes * 60)
    hours = sum(duration for *_, duration in files) / 3600
    print(f"{len(files)} files, {hours * 60:.1f} min of audio from {', '.join(args.roots)}")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="corpus-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    manifest = work / "files.jsonl"
    manifest.write_text("".join(json.dumps({"id": item_id, "path": str(path.resolve())}) + "\n" for item_id, path, _ in files))
    results, options = {}, {"bundle": args.bundle, "backend": "ort-cpu", "shard_rows": 100}
    try:
        for mode in modes:
            if mode == "loop":
                results[mode] = run_loop(files, work / "loop")
            elif mode.startswith("workers-"):
                results[mode] = run_job(manifest, work / mode, workers=int(mode.split("-")[1]), **options)
            elif mode == "ray":
                results[mode] = run_job(manifest, work / mode, ray_address="local", **options)
            print(f"{mode}: {results[mode]['wall']:.1f} s", flush=True)
        report = summarize(results, files, work, hours)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


def summarize(results: dict, files, work: Path, hours: float) -> dict:
    """Print the table; check every dataset's tokens against the loop's token files."""
    reference = {item_id: read_tokens(work / "loop" / f"{index}.mtok").tokens[0]
                 for index, (item_id, _, _) in enumerate(files)} if "loop" in results else None
    print(f"\n{'mode':<10} {'wall s':>8} {'h per h':>8} {'peak RSS/worker MB':>19} {'writer %':>9} {'tokens = loop':>14}")
    print("-" * 73)
    for mode, result in results.items():
        result["hours_per_hour"] = hours / (result["wall"] / 3600)
        same = "reference"
        if mode != "loop" and reference is not None:
            items = {item.id: item.tokens for item in open_dataset(work / mode)}
            same = "yes" if all(np.array_equal(items.get(key), value) for key, value in reference.items()) else "NO"
            result["tokens_equal_loop"] = same == "yes"
        writer = f"{100 * result['writer'] / result['wall']:.1f}" if "writer" in result else ""
        print(f"{mode:<10} {result['wall']:>8.1f} {result['hours_per_hour']:>8.1f} {result['peak_rss_mb']:>19.0f} "
              f"{writer:>9} {same:>14}")
    return {"files": len(files), "hours": hours, "modes": results}


if __name__ == "__main__":
    main()
