"""``build_corpus``: sources -> a sharded, split, resumable 44.1 kHz mono FLAC corpus."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from meltok_runtime.io.atomic import atomic_output

from ...errors import CorpusError
from .bandwidth import MIN_ABOVE_11K_DB, MIN_BANDWIDTH_HZ, SILENCE_RMS_DB, is_band_limited
from .manifest import SPLITS, build_manifest
from .shards import ShardWriter, read_journal
from .sources import AUDIO_SUFFIXES, decoded, scan, source_name, split_of

log = logging.getLogger("meltok.train.corpus")


def build_corpus(sources: Iterable[str | os.PathLike], out: str | os.PathLike, *, seed: int = 0,
                 valid_fraction: float = 0.05, test_fraction: float = 0.05,
                 holdout: list[str] | None = None, shard_mb: float = 45,
                 exclude_band_limited: bool = True, max_files_per_source: int | None = None,
                 workers: int = 1, progress: Callable[[int, int], None] | None = None) -> dict:
    """Build (or resume) a sharded 44.1 kHz mono FLAC corpus under ``out``; return the manifest.

    Args:
        sources: folders (scanned recursively; ``.pk3`` zips are opened) or single files.
            A folder ``.../PKG/usr/share`` of an unpacked Debian package is named ``PKG``.
        holdout: source names whose files all go to ``test``.
        shard_mb: size limit of one shard in MiB.
        exclude_band_limited: drop band-limited files (else keep them, flagged).
        max_files_per_source: a seeded subset of at most this many files per source.
        workers: decoding processes.
        progress: called as ``progress(files_done, files_total)``.

    Rerunning with the same arguments skips shards listed in ``out/journal.jsonl``.
    """
    sources = [Path(s) for s in sources]
    missing = [str(s) for s in sources if not s.exists()]
    if missing or not sources:
        raise CorpusError(f"sources {missing or '[]'} do not exist; give existing folders or files")
    if not (0 <= valid_fraction and 0 <= test_fraction and valid_fraction + test_fraction < 1):
        raise CorpusError(f"valid_fraction={valid_fraction}, test_fraction={test_fraction}: "
                          "expected two fractions >= 0 with a sum below 1")
    if not shard_mb >= 0.125:
        raise CorpusError(f"shard_mb={shard_mb}: expected a shard size of at least 0.125 MiB")
    names = {source_name(s) for s in sources}
    unknown = sorted(set(holdout or []) - names)
    if unknown:
        raise CorpusError(f"holdout {unknown} names no source; the sources are {sorted(names)}")
    out = Path(out)
    journal = out / "journal.jsonl"
    if out.is_dir() and not journal.exists() and any(out.iterdir()):
        raise CorpusError(f"{str(out)!r} is not empty and has no journal.jsonl; give a new or empty folder")
    limit = int(shard_mb * 2 ** 20)
    with tempfile.TemporaryDirectory(prefix="meltok-corpus-") as tmp:
        items = scan(sources, Path(tmp), seed, max_files_per_source)
        if not items:
            raise CorpusError(f"no audio file in {', '.join(map(str, sources))} (looked for "
                              f"{', '.join(sorted(AUDIO_SUFFIXES))} and .pk3 archives); give folders with audio")
        out.mkdir(parents=True, exist_ok=True)
        for it in items:
            it["split"] = "test" if it["source"] in (holdout or []) else \
                split_of(f"{it['source']}/{it['relpath']}", seed, valid_fraction, test_fraction)
        options = {"seed": seed, "valid_fraction": valid_fraction, "test_fraction": test_fraction,
                   "holdout": sorted(holdout or []), "shard_mb": shard_mb,
                   "exclude_band_limited": exclude_band_limited,
                   "max_files_per_source": max_files_per_source,
                   "thresholds": {"min_above_11k_db": MIN_ABOVE_11K_DB, "min_bandwidth_hz": MIN_BANDWIDTH_HZ,
                                  "silence_rms_db": SILENCE_RMS_DB}}
        plan = hashlib.sha256(json.dumps([options, [(i["split"], i["source"], i["relpath"], i["sha1"])
                                                    for i in items]]).encode()).hexdigest()
        old_plan, lines = read_journal(journal)
        if old_plan is None:
            with atomic_output(journal) as t:
                t.write_text(json.dumps({"plan": plan, "options": options}) + "\n", encoding="utf-8")
        elif old_plan != plan:
            raise CorpusError(f"{str(out)!r} was built from other files or options; "
                              "rerun with the original arguments, or give a new folder")
        by_split = {s: [i for i in items if i["split"] == s] for s in SPLITS}
        done_files = 0
        for split in SPLITS:
            (out / split).mkdir(exist_ok=True)
            mine = [ln for ln in lines if ln["split"] == split]
            if mine and mine[-1]["done"]:
                done_files += len(by_split[split])
                continue
            start = tuple(mine[-1]["end"]) if mine else (0, 0)
            done_files += start[0]
            writer = ShardWriter(out, split, sum(1 for ln in mine if ln["shard"]), limit, journal)
            try:
                done_files = _fill_split(writer, by_split[split], start, exclude_band_limited,
                                         workers, progress, done_files, len(items))
            except BaseException:
                writer.abort()
                raise
        _, lines = read_journal(journal)
        manifest = build_manifest(by_split, lines, options)
    with atomic_output(out / "manifest.json") as t:
        t.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest


def _fill_split(writer: ShardWriter, items: list[dict], start: tuple[int, int], exclude: bool,
                workers: int, progress, done: int, total: int) -> int:
    first, offset = start
    for i, (info, pcm, error) in zip(range(first, len(items)), decoded(items[first:], workers)):
        meta = {k: items[i][k] for k in ("path", "source", "relpath", "licence", "sha1")}
        if error is not None:
            log.warning("skipping unreadable %s: %s", items[i]["path"], error)
            writer.note(i, {**meta, **info, "band_limited": None, "excluded": "unreadable", "error": error})
        else:
            limited = is_band_limited(info["bandwidth"])
            reason = "silent" if info["bandwidth"]["rms_db"] < SILENCE_RMS_DB else \
                "band_limited" if limited and exclude else None
            writer.note(i, {**meta, **info, "band_limited": limited, "excluded": reason})
            if reason is None:
                skip = offset if i == first else 0
                writer.write(i, pcm[skip:], skip)
        done += 1
        if progress is not None:
            progress(done, total)
    writer.finish(end=(len(items), 0), done=True)
    return done
