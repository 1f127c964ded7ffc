"""The tokenize job on one machine: reader threads feeding encoder workers, one shard writer.

Reading, decoding and resampling run in a thread pool of the main process, ahead of the encoders,
so they overlap with inference. Encoding runs in ``workers`` processes (one ``Codec`` each, ONNX
Runtime threads = cores / workers so the cores are used once); with one worker the Codec runs in
the main process, on a thread. Items of exactly the same length are encoded as one batch. Rows
come back to the main process, which alone writes shards (``DatasetWriter``), so the journal
decides what is done: a killed job loses at most the rows not yet in a committed shard.

Stopping: on Ctrl-C, SIGTERM (turned into the same interrupt by ``job.tokenize``) or a fault, the
rows already encoded are committed, queued work is cancelled and the worker processes are killed
before the error propagates. Workers ignore SIGINT and SIGTERM (the main process stops them) and,
on Linux, are killed by the kernel if the main process dies without stopping them (SIGKILL).
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from meltok_runtime.dataset.items import JobProgress, encode_group, job_fault, load_item, make_row, peak_rss_mb
from meltok_runtime.errors import ItemError

MAX_READY_SAMPLES = 30 * 60 * 44100  # decoded audio waiting for an encoder: at most ~30 min (~320 MB)

_CODEC = None  # the Codec of this worker process (or of the main process with one worker)


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
    encoders = None
    try:
        if workers == 1:
            _CODEC, encoders = codec, ThreadPoolExecutor(1)
        else:
            codec.close()
            encoders = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_open_worker,
                                           initargs=(codec.bundle, codec.backend, threads, os.getpid()))
        readers = ThreadPoolExecutor(workers)
        try:
            _run(pending, readers, encoders, writer, stats, context, workers, batch, progress)
        finally:
            readers.shutdown(wait=False, cancel_futures=True)
        encoders.shutdown()
    except BaseException:
        if encoders is not None:
            stop_workers(encoders)
        writer.commit()  # rows already encoded are kept; the rest is done again on resume
        raise
    finally:
        _CODEC = None
        codec.close()
    return writer.close(complete=True)


def stop_workers(executor) -> None:
    """Cancel the queued work of ``executor`` and kill its worker processes at once (a process pool), or wait
    for the one encoder call in flight (a thread, which cannot be killed, using the codec about to close)."""
    processes = list((getattr(executor, "_processes", None) or {}).values())  # a ThreadPoolExecutor has none
    executor.shutdown(wait=not processes, cancel_futures=True)
    for process in processes:
        process.kill()
    for process in processes:
        process.join(timeout=10)


def _open_worker(bundle, backend, threads, parent: int):
    from meltok_runtime.codec import Codec

    global _CODEC
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and SIGTERM are handled once, by the main process,
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # which then kills the workers
    _die_with_parent(parent)
    _CODEC = Codec.open(bundle, backend=backend, threads=threads)


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel SIGKILL this process when the main process dies, even by SIGKILL (strictly: when
    the thread that started it ends; that is the thread running the job, which outlives its workers)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the main process died before the line above took effect
        os._exit(1)


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
            except Exception as error:  # noqa: BLE001 - out of memory etc.: the job's fault, not the item's
                raise job_fault(error, f"reading {item.path!r}") from error
        while ready and len(encoding) < 2 * workers:
            group = _take_group(ready, batch)
            try:
                encoding[encoders.submit(_encode, [loaded.audio for loaded in group])] = group
            except BrokenProcessPool as error:  # a worker died while the last results were collected
                raise _dead_worker(error) from None
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
    except ItemError as error:  # the encoder refused the audio itself
        _fail(writer, stats, [loaded.item for loaded in group], str(error), progress)
        return
    except BrokenProcessPool as error:
        raise _dead_worker(error) from None
    except Exception as error:  # noqa: BLE001 - a backend error or out of memory: the job's fault, not the items'
        raise job_fault(error, "encoding") from error
    stats.worker_peak_rss_mb = max(stats.worker_peak_rss_mb, rss)
    for loaded, item_tokens in zip(group, tokens):
        writer.add(make_row(loaded.item, item_tokens, num_samples=loaded.audio.shape[-1], source_rate=loaded.sample_rate,
                            channels=loaded.channels, sample_rate=context["sample_rate"],
                            model_id=context["model_id"], backend=backend))
        stats.record(loaded.item, loaded.audio.shape[-1] / context["sample_rate"])
        if progress is not None:
            progress(stats)


def _dead_worker(error: BrokenProcessPool):
    """The job's one-line error when a worker process died (seen at a result or at the next submission)."""
    return job_fault(error, "an encoder worker process (killed, or out of memory?)")


def _fail(writer, stats, items, reason, progress):
    for item in items:
        writer.fail(item.id, item.path, reason)
        stats.record(item, failed=True)
        if progress is not None:
            progress(stats)
