"""What every corpus job does per item, whichever engine runs it (local workers or Ray).

An item is read and checked (``load_item``: the same ``load_audio`` + ``prepare_audio`` path as
``meltok-rt encode``, so tokens are identical), encoded alone or with items of exactly the same
length (``encode_group``: zero-padding items into a batch would change their tokens under the
reference architecture's GroupNorm), and turned into a dataset row (``make_row``).

Two kinds of error, kept apart by type: an item whose own data cannot be used (unreadable, empty,
NaN/Inf, too short: ``AudioInputError`` from the audio checks) raises ``ItemError`` with a one-line
reason, which jobs record for that item and go on; anything else (a backend error, out of memory, a
dead worker) is a fault of the job (``job_fault`` turns it into ``WorkerError``): the job stops,
nothing is recorded for the items in flight, and a resumed job does them again.
"""
from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meltok_runtime.errors import AudioInputError, ItemError, WorkerError
from meltok_runtime.manifest import MANIFEST_NAME, file_sha256, load_manifest
from meltok_runtime.windowing import DEFAULT_CONTEXT_SECONDS, DEFAULT_WINDOW_SECONDS


@dataclass
class LoadedItem:
    """An item's audio ready for the encoder: mono float32 ``[N]`` at the model's rate."""

    item: object
    audio: np.ndarray
    sample_rate: int
    channels: int


def dataset_identity(bundle) -> dict:
    """What a dataset records about the model making its tokens; a resume must match it."""
    from meltok_runtime.codec import default_bundle
    from meltok_runtime.dataset.reader import token_dtype

    bundle = default_bundle() if bundle is None else Path(bundle)
    manifest = load_manifest(bundle)
    layout = {"column": "tokens", "rows": manifest.token_rows, "codebook_size": manifest.codebook_size,
              "dtype": token_dtype(manifest.codebook_size).name, "order": "[rows, columns], row 0 = lowest mel bins",
              "hop_length": manifest.hop_length, "compression": manifest.compression,
              "columns_per_second": manifest.sample_rate / (manifest.hop_length * manifest.compression),
              "window_seconds": DEFAULT_WINDOW_SECONDS, "context_seconds": DEFAULT_CONTEXT_SECONDS}
    return {"model_id": manifest.model_id, "model_name": manifest.model_name,
            "bundle_sha256": file_sha256(bundle / MANIFEST_NAME), "sample_rate": manifest.sample_rate,
            "token_layout": layout}


def load_item(item, sample_rate: int, min_samples: int, hop_length: int) -> LoadedItem:
    """Read, check, mix down and resample one item; ItemError with the reason when its data cannot be used.

    The same steps as ``meltok-rt encode`` (``load_audio``, then ``prepare_audio`` as
    ``CodecPipeline.prepare`` calls it), done without a codec so that they can run apart from it.
    Other errors (out of memory, ...) are not the item's: they propagate.
    """
    from meltok_runtime.io.audio import load_audio, prepare_audio

    try:
        samples, rate = load_audio(item.path)
        batch, _ = prepare_audio(samples[None], rate, sample_rate, hop_length=hop_length)
    except AudioInputError as error:
        raise ItemError(str(error).splitlines()[0]) from None
    if batch.shape[-1] < min_samples:
        raise ItemError(f"too short: {batch.shape[-1]} samples at {sample_rate} Hz, need at least {min_samples} "
                        "(one token column)")
    return LoadedItem(item, batch[0], rate, samples.shape[0])


def encode_group(codec, audios: list) -> list:
    """Tokens ``[rows, T']`` of each of ``audios`` (mono ``[N]``, all of one length) in one call.

    ItemError when the encoder refuses the audio itself; any other error is a fault and propagates."""
    try:
        tokens = codec.encode_prepared(np.stack(audios))
    except AudioInputError as error:
        raise ItemError(str(error).splitlines()[0]) from None
    return list(tokens.astype(np.uint16 if codec.codebook_size <= 2 ** 16 else np.uint32))


def job_fault(error: BaseException, where: str) -> WorkerError:
    """A ``WorkerError`` saying that ``where`` (e.g. "an encoder worker") failed with ``error``, that no item
    was marked failed for it, and how to resume."""
    reason = str(error).splitlines()[0] if str(error).strip() else "no message"
    return WorkerError(f"{where} failed ({type(error).__name__}: {reason}); this is a fault of the job, not of the "
                       "items, so none was marked failed: fix the cause (memory, backend, device) and run the same "
                       "command again to resume")


def make_row(item, tokens: np.ndarray, *, num_samples: int, source_rate: int, channels: int, sample_rate: int,
             model_id: str, backend: str) -> dict:
    """A dataset row (``meltok_runtime.dataset`` schema) plus ``backend``; ``num_samples`` at ``sample_rate``."""
    return {"id": item.id, "source": item.path, "tokens": tokens, "num_samples": num_samples,
            "sample_rate": source_rate, "channels": channels, "duration": num_samples / sample_rate,
            "model_id": model_id, "backend": backend, **item.metadata}


def peak_rss_mb() -> float:
    """Peak resident memory of this process's own address space so far, in MB.

    Linux: ``VmHWM`` (``ru_maxrss`` would include the parent's memory at fork, kept across exec).
    """
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024


@dataclass
class JobProgress:
    """Counters a job updates and a progress display reads."""

    items_total: int
    bytes_total: int
    items_done: int = 0
    failed: int = 0
    bytes_done: int = 0
    audio_seconds: float = 0.0
    worker_peak_rss_mb: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def record(self, item, seconds: float = 0.0, failed: bool = False) -> None:
        self.items_done += 1
        self.failed += failed
        self.bytes_done += item.size
        self.audio_seconds += seconds

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def real_time_factor(self) -> float:
        """Seconds of audio tokenized per second of wall time."""
        return self.audio_seconds / max(self.elapsed, 1e-9)

    def describe(self) -> str:
        return (f"{self.items_done}/{self.items_total} items, {self.audio_seconds / 3600:.2f} h of audio, "
                f"{self.real_time_factor:.1f}x real time" + (f", {self.failed} failed" if self.failed else ""))
