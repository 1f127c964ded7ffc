"""``CorpusReader``: random training crops from one split of a built corpus."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from ...errors import CorpusError
from .manifest import SPLITS, read_manifest


class CorpusReader:
    """Random training crops from one split of a corpus built by ``build_corpus``.

    Only the samples of a crop are decoded (FLAC seek), never a whole shard.
    """

    SILENT_PEAK = 1e-3  # -60 dBFS: quieter crops are redrawn rather than amplified

    def __init__(self, corpus_dir: str | os.PathLike, split: str):
        self.root = Path(corpus_dir)
        if split not in SPLITS:
            raise CorpusError(f"split {split!r}: expected one of {list(SPLITS)}")
        manifest = read_manifest(self.root)
        segs = [(s["shard"], s["offset"], s["length"]) for f in manifest["files"]
                if f["split"] == split and f["excluded"] is None for s in f["segments"]]
        if not segs:
            raise CorpusError(f"split {split!r} of {str(self.root)!r} holds no audio; "
                              "use another split or more sources")
        self.split = split
        self.shards = sorted({s[0] for s in segs})
        index = {name: k for k, name in enumerate(self.shards)}
        self._shard = np.array([index[s[0]] for s in segs])
        self._offset = np.array([s[1] for s in segs], dtype=np.int64)
        self._length = np.array([s[2] for s in segs], dtype=np.int64)

    @property
    def num_samples(self) -> int:
        """Total samples of the split at 44.1 kHz."""
        return int(self._length.sum())

    def random_crop(self, rng: np.random.Generator, num_samples: int = 24320) -> np.ndarray:
        """A float32 ``[num_samples]`` crop, peak scaled to a random level in [-6, -1] dBFS.

        Files are picked with probability proportional to their duration, among those at
        least ``num_samples`` long when there are any (else shorter ones, zero-padded).
        A crop whose peak is below -60 dBFS is redrawn (up to 10 times; then it is
        returned unscaled).
        """
        long_enough = np.nonzero(self._length >= num_samples)[0]
        pool = long_enough if len(long_enough) else np.arange(len(self._length))
        weights = self._length[pool] / self._length[pool].sum()
        for _ in range(10):
            j = pool[rng.choice(len(pool), p=weights)]
            n = int(min(num_samples, self._length[j]))
            start = int(rng.integers(0, self._length[j] - n + 1))
            with sf.SoundFile(self.root / self.shards[self._shard[j]]) as f:
                f.seek(int(self._offset[j]) + start)
                crop = f.read(n, dtype="float32")
            crop = np.pad(crop, (0, num_samples - len(crop)))
            peak = float(np.abs(crop).max())
            if peak >= self.SILENT_PEAK:
                level_db = rng.uniform(-6.0, -1.0)
                return (crop * (10 ** (level_db / 20) / peak)).astype(np.float32)
        return crop
