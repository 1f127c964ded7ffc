"""Corpus parts: one split of a corpus cut into self-contained corpora of one shard each, so that a
training set can travel in pieces of bounded size (a borrowed GPU takes 64 MiB per call), and a
reader that trains on the parts present and picks up parts that arrive while it runs.

A parts folder holds::

    PARTS/part-00/manifest.json                a version-1 corpus manifest of this shard alone
    PARTS/part-00/train/shard-00004.flac       the shard, byte for byte

A part appears by renaming its finished folder into ``PARTS`` (``pack_parts`` does; so should a
script that moves carried parts in), so a reader never sees half a part.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from meltok_runtime.io.atomic import atomic_output

from ...errors import CorpusError
from .manifest import SAMPLE_RATE, SPLITS, read_manifest
from .reader import CorpusReader

log = logging.getLogger("meltok.train.corpus")

PART_PREFIX = "part-"


def _spread(count: int, limit: int | None) -> list[int]:
    """``limit`` indexes spread evenly over ``range(count)`` (all of them without a limit): the first
    parts then sample the whole corpus, not its first sources."""
    if limit is None or limit >= count:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, limit).round()})


def _part_manifest(manifest: dict, split: str, shard: dict) -> dict:
    """The manifest of a corpus holding only ``shard`` of ``split``."""
    files = []
    for record in manifest["files"]:
        segments = [s for s in record["segments"] if s["shard"] == shard["path"]]
        if record["split"] == split and record["excluded"] is None and segments:
            files.append({**record, "segments": segments})
    samples = sum(s["length"] for f in files for s in f["segments"])
    empty = {"files": 0, "samples": 0, "hours": 0.0, "shards": 0, "bytes": 0,
             "excluded": {"band_limited": 0, "silent": 0, "unreadable": 0}, "band_limited_kept": 0}
    totals = {s: dict(empty) for s in SPLITS}
    totals[split] = {**empty, "files": len(files), "samples": samples,
                     "hours": round(samples / SAMPLE_RATE / 3600, 4), "shards": 1, "bytes": shard["bytes"]}
    part = {key: manifest[key] for key in ("format", "version", "sample_rate", "options")}
    part.update(totals=totals, shards={s: ([shard] if s == split else []) for s in SPLITS}, files=files)
    return json.loads(json.dumps(part))


def pack_parts(corpus: str | os.PathLike, out: str | os.PathLike, *, split: str = "train",
               max_parts: int | None = None, part_mb: float = 45.0) -> list[Path]:
    """Cut ``split`` of ``corpus`` into part folders ``out/part-NN`` of one shard each (at most
    ``max_parts``, spread over the corpus); parts already in ``out`` are kept. Returns the parts."""
    corpus, out = Path(corpus), Path(out)
    manifest = read_manifest(corpus)
    if split not in SPLITS:
        raise CorpusError(f"split {split!r}: expected one of {list(SPLITS)}")
    shards = manifest["shards"][split]
    if not shards:
        raise CorpusError(f"split {split!r} of {str(corpus)!r} has no shards; build the corpus first")
    limit = int(part_mb * 2 ** 20)
    too_big = [s["path"] for s in shards if s["bytes"] > limit]
    if too_big:
        raise CorpusError(f"{len(too_big)} shards are larger than {part_mb} MiB (e.g. {too_big[0]}); "
                          f"rebuild the corpus with --shard-mb {part_mb} or less")
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for number, index in enumerate(_spread(len(shards), max_parts)):
        shard = shards[index]
        part = out / f"{PART_PREFIX}{number:02d}"
        parts.append(part)
        if (part / "manifest.json").exists():
            continue
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
        (staging / split).mkdir()
        shutil.copyfile(corpus / shard["path"], staging / shard["path"])
        with atomic_output(staging / "manifest.json") as tmp:
            tmp.write_text(json.dumps(_part_manifest(manifest, split, shard)), encoding="utf-8")
        os.replace(staging, part)
        log.info("part %s: %s (%.1f MiB)", part.name, shard["path"], shard["bytes"] / 2 ** 20)
    return parts


def is_parts_folder(path: str | os.PathLike) -> bool:
    """A folder of corpus parts (no manifest of its own; part folders, or none yet)."""
    path = Path(path)
    return path.is_dir() and not (path / "manifest.json").exists() and \
        any(p.name.startswith(PART_PREFIX) for p in path.iterdir())


class PartsReader:
    """Random crops from ``split`` of every part in ``root``, each part weighted by its samples.

    New parts are looked for at most every ``refresh_seconds`` (0: on every crop). Crops are drawn
    with the caller's generator as ``CorpusReader`` draws them; while parts arrive, a resumed run
    draws other crops than an uninterrupted one would.
    """

    def __init__(self, root: str | os.PathLike, split: str, refresh_seconds: float = 30.0):
        self.root, self.split, self.refresh_seconds = Path(root), split, refresh_seconds
        self.parts: dict[str, CorpusReader] = {}
        self._checked = float("-inf")
        self.refresh()
        if not self.parts:
            raise CorpusError(f"{str(self.root)!r} holds no part with {split!r} audio yet; "
                              "move a part folder in (meltok data parts) before training")

    def refresh(self) -> None:
        """Add the parts that appeared since the last look."""
        self._checked = time.monotonic()
        for folder in sorted(self.root.glob(f"{PART_PREFIX}*/manifest.json")):
            name = folder.parent.name
            if name in self.parts:
                continue
            try:
                self.parts[name] = CorpusReader(folder.parent, self.split)
            except CorpusError:
                continue  # a part of another split
            log.info("training data: part %s added (%d parts, %.2f h)", name, len(self.parts),
                     self.num_samples / SAMPLE_RATE / 3600)

    @property
    def num_samples(self) -> int:
        return sum(reader.num_samples for reader in self.parts.values())

    def random_crop(self, rng: np.random.Generator, num_samples: int = 24320) -> np.ndarray:
        """A float32 ``[num_samples]`` crop from a part picked in proportion to its samples."""
        if time.monotonic() - self._checked >= self.refresh_seconds:
            self.refresh()
        readers = list(self.parts.values())
        weights = np.array([reader.num_samples for reader in readers], dtype=np.float64)
        reader = readers[int(rng.choice(len(readers), p=weights / weights.sum()))]
        return reader.random_crop(rng, num_samples)
