"""The corpus manifest (``CORPUS/manifest.json``): per-file records, shards and totals; written by
``build``, read (with its format and version check) by ``reader`` and ``heldout``."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ...errors import CorpusError

SAMPLE_RATE = 44100
SPLITS = ("train", "valid", "test")
MANIFEST_FORMAT = "meltok-corpus"
MANIFEST_VERSION = 1


def read_manifest(corpus_dir: str | os.PathLike) -> dict:
    """The manifest of a corpus built by ``build_corpus``; CorpusError when missing or not this version."""
    path = Path(corpus_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CorpusError(f"cannot read {str(path)!r} ({exc}); build the corpus first") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or \
            manifest.get("version") != MANIFEST_VERSION:
        raise CorpusError(f"{str(path)!r} is not a version-{MANIFEST_VERSION} meltok corpus manifest")
    return manifest


def build_manifest(by_split: dict[str, list[dict]], lines: list[dict], options: dict) -> dict:
    records: dict[str, dict[int, dict]] = {s: {} for s in SPLITS}
    shards: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for ln in lines:
        recs = records[ln["split"]]
        for i, rec in ln["files"].items():
            recs[int(i)] = {**rec, "split": ln["split"], "segments": recs.get(int(i), {}).get("segments", [])}
        if ln["shard"]:
            shards[ln["split"]].append({"path": ln["shard"], "samples": ln["samples"], "bytes": ln["bytes"]})
            for i, offset, length, _ in ln["segments"]:
                recs[i].setdefault("segments", []).append(
                    {"shard": ln["shard"], "offset": offset, "length": length})
    files, totals = [], {}
    for split in SPLITS:
        recs = [records[split][i] for i in range(len(by_split[split]))]
        files += recs
        kept = [r for r in recs if r["excluded"] is None]
        samples = sum(seg["length"] for r in kept for seg in r["segments"])
        totals[split] = {
            "files": len(kept), "samples": samples, "hours": round(samples / SAMPLE_RATE / 3600, 4),
            "shards": len(shards[split]), "bytes": sum(s["bytes"] for s in shards[split]),
            "excluded": {reason: sum(r["excluded"] == reason for r in recs)
                         for reason in ("band_limited", "silent", "unreadable")},
            "band_limited_kept": sum(bool(r["band_limited"]) for r in kept)}
    return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "sample_rate": SAMPLE_RATE,
            "options": options, "totals": totals, "shards": shards, "files": files}
