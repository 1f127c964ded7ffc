"""The tokenize job on one machine: reader threads feeding encoder workers, one shard writer.

Reading, decoding and resampling run in a thread pool of the main process, ahead of the encoders,
so they overlap with inference. Encoding runs in ``workers`` processes (one ``Codec`` each, ONNX
Runtime threads = cores / workers so the cores are used once); with one worker the Codec runs in
the main process, on a thread. Items of exactly the same length are encoded as one batch. Rows
come back to the main process, which alone writes shards (``DatasetWriter``), so the journal
decides what is done: a killed job loses at most the rows not yet in a committed shard.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from meltok_runtime.dataset.items import ItemError, JobProgress, encode_group, load_item, make_row, peak_rss_mb
from meltok_runtime.errors import MeltokError

MAX_READY_SAMPLES = 30 * 60 * 44100  # decoded audio waiting for an encoder: at most ~30 min (~320 MB)

_CODEC = None  # the Codec of this worker process (or of the main process with one worker)


class WorkerError(MeltokError, RuntimeError):
    """An encoder worker process died (killed, out of memory); the job stops and can be resumed."""


def worker_threads(workers: int, threads: int | None = None) -> int:
    """ONNX Runtime threads per worker: the given number, else the cores shared out once."""
    return threads or max(1, (os.cpu_count() or 1) // workers)


def tokenize_local(items, writer, *, bundle=None, backend: str = "auto", workers: int = 1,
                   threads: int | None = None, batch: int = 8, progress=None) -> dict:
    """Tokenize the ``items`` not yet done in ``writer``'s dataset; returns the dataset summary.

    ``batch``: at most this many items of one exact length go into one encoder call.
    ``progress(JobProgress)`` is called after every item.
    """
    from meltok_runtime.codec import Codec

    global _CODEC
    pending = [item for item in items if item.id not in writer.done]
    stats = JobProgress(len(pending), sum(item.size for item in pending))
    threads = worker_threads(workers, threads)
    codec = Codec.open(bundle, backend=backend, threads=threads)  # checks the bundle, resolves "auto" once
    context = {"sample_rate": codec.sample_rate, "model_id": codec.model_id,
               "min_samples": codec.hop_length * codec.compression, "hop_length": codec.hop_length}
    try:
        if workers == 1:
            _CODEC, encoders = codec, ThreadPoolExecutor(1)
        else:
            codec.close()
            encoders = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_open_worker, initargs=(codec.bundle, codec.backend, threads))
        with encoders, ThreadPoolExecutor(workers) as readers:
            _run(pending, readers, encoders, writer, stats, context, workers, batch, progress)
    except BaseException:
        writer.commit()  # rows already encoded are kept; the rest is done again on resume
        raise
    finally:
        _CODEC = None
        codec.close()
    return writer.close(complete=True)


def _open_worker(bundle, backend, threads):
    from meltok_runtime.codec import Codec

    global _CODEC
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled once, by the main process
    _CODEC = Codec.open(bundle, backend=backend, threads=threads)


def _encode(audios):
    return encode_group(_CODEC, audios), _CODEC.backend, peak_rss_mb()


def _run(pending, readers, encoders, writer, stats, context, workers, batch, progress):
    queue = iter(pending)
    loading, ready, encoding = deque(), [], {}
    lookahead = 2 * workers + batch
    while True:
        while (len(loading) + len(ready) < lookahead
               and sum(loaded.audio.shape[-1] for loaded in ready) < MAX_READY_SAMPLES):
            item = next(queue, None)
            if item is None:
                break
            loading.append((item, readers.submit(load_item, item, context["sample_rate"], context["min_samples"],
                                                 context["hop_length"])))
        for entry in [entry for entry in loading if entry[1].done()]:
            loading.remove(entry)
            item, future = entry
            try:
                ready.append(future.result())
            except ItemError as error:
                _fail(writer, stats, [item], str(error), progress)
        while ready and len(encoding) < 2 * workers:
            group = _take_group(ready, batch)
            encoding[encoders.submit(_encode, [loaded.audio for loaded in group])] = group
        if not (loading or ready or encoding):
            return
        wait(list(encoding) + [future for _, future in loading], return_when=FIRST_COMPLETED)
        for future in [future for future in encoding if future.done()]:
            _collect(future, encoding.pop(future), writer, stats, context, progress)


def _take_group(ready: list, batch: int) -> list:
    """The oldest ready item and up to ``batch - 1`` others of exactly its length."""
    first = ready.pop(0)
    same = [loaded for loaded in ready if loaded.audio.shape[-1] == first.audio.shape[-1]][:batch - 1]
    for loaded in same:
        ready.remove(loaded)
    return [first, *same]


def _collect(future, group, writer, stats, context, progress):
    try:
        tokens, backend, rss = future.result()
    except BrokenProcessPool as error:
        raise WorkerError(f"an encoder worker process died ({error}); run the same command again to resume") from None
    except Exception as error:  # noqa: BLE001 - an item the encoder refuses is recorded, not fatal
        _fail(writer, stats, [loaded.item for loaded in group], f"{type(error).__name__}: {error}".splitlines()[0],
              progress)
        return
    stats.worker_peak_rss_mb = max(stats.worker_peak_rss_mb, rss)
    for loaded, item_tokens in zip(group, tokens):
        writer.add(make_row(loaded.item, item_tokens, num_samples=loaded.audio.shape[-1], source_rate=loaded.sample_rate,
                            channels=loaded.channels, sample_rate=context["sample_rate"],
                            model_id=context["model_id"], backend=backend))
        stats.record(loaded.item, loaded.audio.shape[-1] / context["sample_rate"])
        if progress is not None:
            progress(stats)


def _fail(writer, stats, items, reason, progress):
    for item in items:
        writer.fail(item.id, item.path, reason)
        stats.record(item, failed=True)
        if progress is not None:
            progress(stats)
