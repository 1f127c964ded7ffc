"""Corpus shards: FLAC files filled one after another, each recorded in a journal so a killed
build resumes where it stopped."""
from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from meltok_runtime.io.atomic import atomic_output

from ...errors import CorpusError
from .manifest import SAMPLE_RATE

log = logging.getLogger("meltok.train.corpus")

_BLOCK = SAMPLE_RATE  # samples written per step; shard size is checked before each block


class ShardWriter:
    """Fills ``out/split/shard-NNNNN.flac`` one after another, each at most ``limit`` bytes.

    A shard is encoded in memory, then written with ``atomic_output`` and recorded in
    the journal; a finished shard is never opened for writing again.
    """

    def __init__(self, out: Path, split: str, index: int, limit: int, journal: Path):
        self.out, self.split, self.index, self.limit, self.journal = out, split, index, limit, journal
        self._sf = None
        self._reset()

    def _reset(self) -> None:
        self.samples, self.segments, self.files = 0, [], {}

    def _size(self) -> int:
        with self._buf.getbuffer() as view:
            return view.nbytes

    def note(self, i: int, record: dict) -> None:
        """Record file ``i``'s measurements with the shard being filled."""
        self.files[str(i)] = record

    def write(self, i: int, pcm: np.ndarray, start: int) -> None:
        """Append ``pcm`` int16 ``[N]`` = samples ``start:start + N`` of file ``i``."""
        for b in range(0, len(pcm), _BLOCK):
            block = pcm[b:b + _BLOCK]
            # FLAC never exceeds ~2.02 bytes/sample; the encoder holds back up to 4096 samples.
            if self._sf is not None and self.samples and \
                    self._size() + int(2.1 * (4096 + len(block))) + 8192 > self.limit:
                self.finish(end=(i, start + b))
            if self._sf is None:
                self._buf = io.BytesIO()
                self._sf = sf.SoundFile(self._buf, "w", SAMPLE_RATE, 1, "PCM_16", format="FLAC")
            self._sf.write(block)
            if self.segments and self.segments[-1][0] == i:
                self.segments[-1][2] += len(block)
            else:
                self.segments.append([i, self.samples, len(block), start + b])
            self.samples += len(block)

    def finish(self, end: tuple[int, int], done: bool = False) -> None:
        """Close the current shard (if any), write it, and journal it with ``end`` = (file, sample)."""
        line = {"split": self.split, "shard": None, "samples": 0, "bytes": 0, "end": list(end),
                "done": done, "files": self.files, "segments": []}
        if self._sf is not None:
            self._sf.close()
            data = self._buf.getvalue()
            self._sf = self._buf = None
            if len(data) > self.limit:
                raise CorpusError(f"shard of {len(data)} bytes exceeds the {self.limit}-byte limit; "
                                  "this is a bug, please report it")
            name = f"{self.split}/shard-{self.index:05d}.flac"
            with atomic_output(self.out / name) as tmp:
                tmp.write_bytes(data)
            self.index += 1
            line.update(shard=name, samples=self.samples, bytes=len(data), segments=self.segments)
        if line["shard"] or self.files or done:
            with open(self.journal, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
                f.flush()
                os.fsync(f.fileno())
        self._reset()

    def abort(self) -> None:
        if self._sf is not None:
            self._sf.close()
            self._sf = self._buf = None


def read_journal(journal: Path) -> tuple[str | None, list[dict]]:
    """``(plan fingerprint, shard lines)``; a torn last line (killed mid-write) is ignored."""
    if not journal.exists():
        return None, []
    lines = []
    for raw in journal.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            log.warning("ignoring a torn line in %s", journal)
    plan = lines[0].get("plan") if lines else None
    return plan, lines[1:]
