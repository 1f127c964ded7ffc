"""Evaluation clips cut from a corpus split (by default the held-out ``test`` split)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from meltok_runtime.io.atomic import atomic_output

from ..errors import CorpusError
from .corpus import SAMPLE_RATE, read_manifest


def export_clips(corpus_dir: str | os.PathLike, out: str | os.PathLike, *, split: str = "test",
                 categories: dict[str, str] | None = None, per_source: int = 10, seconds: float = 8.0,
                 min_seconds: float = 2.0, seed: int = 0, sources: list[str] | None = None) -> list[dict]:
    """Write up to ``per_source`` clips of at most ``seconds`` from each source of ``split`` as
    ``out/<category>/<source>-<n>.flac`` (mono, 44.1 kHz, 16-bit) and ``out/clips.json``.

    ``categories`` maps source names to a category folder (``speech``, ``music``, ...); sources not
    in it keep their own name. Files shorter than ``min_seconds`` are skipped; each clip is cut from
    the middle of its file; the choice of files is seeded. ``sources`` limits the sources used
    (e.g. the packages held out whole, so no clip shares a package with the training data).
    """
    root = Path(corpus_dir)
    manifest = read_manifest(root)
    files = [f for f in manifest["files"] if f["split"] == split and f["excluded"] is None
             and sum(s["length"] for s in f["segments"]) >= min_seconds * SAMPLE_RATE
             and (not sources or f["source"] in sources)]
    if not files:
        raise CorpusError(f"split {split!r} of {str(root)!r} has no file of at least {min_seconds} s")
    rng = np.random.default_rng(seed)
    by_source: dict[str, list[dict]] = {}
    for entry in files:
        by_source.setdefault(entry["source"], []).append(entry)
    written = []
    for source in sorted(by_source):
        entries = by_source[source]
        chosen = rng.choice(len(entries), size=min(per_source, len(entries)), replace=False)
        folder = Path(out) / (categories or {}).get(source, source)
        folder.mkdir(parents=True, exist_ok=True)
        for number, index in enumerate(sorted(chosen)):
            entry = entries[index]
            audio = np.concatenate([_read_segment(root, s) for s in entry["segments"]])
            length = min(len(audio), int(seconds * SAMPLE_RATE))
            start = (len(audio) - length) // 2
            path = folder / f"{source}-{number:02d}.flac"
            with atomic_output(path) as tmp:
                sf.write(tmp, audio[start:start + length], SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            written.append({"clip": str(path.relative_to(out)), "source": source, "file": entry["relpath"],
                            "licence": entry.get("licence"), "start": start, "length": length})
    with atomic_output(Path(out) / "clips.json") as tmp:
        tmp.write_text(json.dumps(written, indent=1))
    return written


def _read_segment(root: Path, segment: dict) -> np.ndarray:
    with sf.SoundFile(root / segment["shard"]) as handle:
        handle.seek(segment["offset"])
        return handle.read(segment["length"], dtype="float32")
