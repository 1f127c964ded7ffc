"""Training batches of random crops with a resumable position, and fixed validation crops.

The *data position* is the state of one ``numpy.random.Generator`` (PCG64) per process: it
picks every crop (file, offset, gain) through ``CorpusReader.random_crop``. Process ``r`` of a
run with seed ``s`` starts from ``SeedSequence([s, r])`` (the DistributedSampler equivalent:
independent streams per rank). Checkpoints store the state after the last batch the trainer
*consumed*; batches read ahead by the prefetch thread are drawn again after a resume.
"""
from __future__ import annotations

import copy
import logging
import queue
import threading
from typing import Callable

import numpy as np
import torch

from .tonal import tonal_crop

log = logging.getLogger(__name__)


def open_reader(corpus_dir, split: str):
    """``CorpusReader(corpus_dir, split)`` of ``meltok.train.corpus``, or a ``PartsReader`` when
    ``corpus_dir`` is a folder of corpus parts (``meltok data parts``)."""
    from .corpus import CorpusReader
    from .corpus.parts import PartsReader, is_parts_folder

    if is_parts_folder(corpus_dir):
        return PartsReader(corpus_dir, split)
    return CorpusReader(corpus_dir, split)


class CropBatches:
    """``next() -> float32 tensor [batch_size, num_samples]`` of random crops from ``reader``.

    ``prefetch`` > 0 reads that many batches ahead in a background thread (FLAC decoding
    releases the GIL). ``tonal_fraction``: the share of crops that are synthetic tonal signals
    (``tonal.tonal_crop``), drawn from the same generator. ``state_dict()`` / ``load_state_dict()`` save and restore the position;
    load before the first ``next()``.
    """

    def __init__(self, reader, batch_size: int, num_samples: int, seed: int, rank: int = 0, prefetch: int = 2,
                 tonal_fraction: float = 0.0, sample_rate: int = 44100):
        self.reader, self.batch_size, self.num_samples = reader, batch_size, num_samples
        self.prefetch = prefetch
        self.tonal_fraction, self.sample_rate = tonal_fraction, sample_rate
        self._rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, rank])))
        self._state = copy.deepcopy(self._rng.bit_generator.state)
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _draw(self) -> np.ndarray:
        batch = np.stack([self._crop() for _ in range(self.batch_size)])
        return batch.astype(np.float32, copy=False)

    def _crop(self) -> np.ndarray:
        """A corpus crop, or with probability ``tonal_fraction`` a synthetic tonal one (``tonal.tonal_crop``)."""
        if self.tonal_fraction and self._rng.random() < self.tonal_fraction:
            return tonal_crop(self._rng, self.num_samples, self.sample_rate)
        return self.reader.random_crop(self._rng, self.num_samples)

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self._draw()
                item = (batch, copy.deepcopy(self._rng.bit_generator.state))
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as error:  # handed to the consumer, which raises it
            self._queue.put((error, None))

    def next(self) -> torch.Tensor:
        if self.prefetch <= 0:
            batch = self._draw()
            self._state = copy.deepcopy(self._rng.bit_generator.state)
            return torch.from_numpy(batch)
        if self._thread is None:
            self._queue = queue.Queue(maxsize=self.prefetch)
            self._thread = threading.Thread(target=self._produce, name="meltok-crops", daemon=True)
            self._thread.start()
        batch, state = self._queue.get()
        if isinstance(batch, BaseException):
            raise batch
        self._state = state
        return torch.from_numpy(batch)

    def state_dict(self) -> dict:
        """JSON-compatible generator state after the last batch returned by ``next``."""
        return copy.deepcopy(self._state)

    def load_state_dict(self, state: dict) -> None:
        if self._thread is not None:
            raise RuntimeError("load the data position before drawing the first batch")
        self._rng.bit_generator.state = copy.deepcopy(state)
        self._state = copy.deepcopy(state)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def fixed_crops(reader, count: int, num_samples: int, seed: int = 12345) -> np.ndarray:
    """``count`` crops ``[count, num_samples]`` drawn with a fixed seed: the same on every call."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 999])))
    if count == 0:
        return np.zeros((0, num_samples), np.float32)
    return np.stack([reader.random_crop(rng, num_samples) for _ in range(count)]).astype(np.float32)


ReaderFactory = Callable[[object, str], object]
