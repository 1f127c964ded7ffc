"""``tokenize``: sources -> items -> a dataset folder, on local workers or on Ray.

>>> from meltok_runtime.dataset.job import tokenize
>>> summary = tokenize(["music/", "list.csv"], "dataset/", workers=2)          # local processes
>>> summary = tokenize(["music/"], "dataset/", ray_address="auto", workers=8)   # an existing Ray cluster

Running the same call again on the same folder resumes it (see ``writer``). While a job runs in the
main thread, SIGTERM (``kill``, ``timeout``, service managers) interrupts it exactly as Ctrl-C does
(``KeyboardInterrupt``): workers are stopped, encoded rows committed, and the same call resumes it.
"""
from __future__ import annotations

import contextlib
import signal
import threading

from meltok_runtime.dataset.items import dataset_identity
from meltok_runtime.dataset.sources import collect_items
from meltok_runtime.dataset.reader import COLUMNS
from meltok_runtime.dataset.writer import DEFAULT_COMMIT_SECONDS, DatasetWriter
from meltok_runtime.errors import SettingsError


def tokenize(sources, output, *, bundle=None, backend: str = "auto", workers: int = 1, threads: int | None = None,
             shard_rows: int = 1000, commit_seconds: float = DEFAULT_COMMIT_SECONDS, batch: int = 8,
             ray_address: str | None = None, actors_per_gpu: int = 2, progress=None) -> dict:
    """Tokenize every item of ``sources`` into the dataset folder ``output``; returns its summary
    (``dataset.json``). A shard is committed every ``shard_rows`` rows or ``commit_seconds`` seconds,
    whichever comes first. ``ray_address``: None runs locally, ``"local"`` on a local Ray instance,
    anything else joins that Ray cluster (``actors_per_gpu`` applies there)."""
    if workers < 1 or shard_rows < 1 or batch < 1 or not commit_seconds > 0:
        raise SettingsError(f"need workers, shard_rows and batch >= 1 and commit_seconds > 0, got {workers}, "
                            f"{shard_rows}, {batch}, {commit_seconds}")
    items, metadata_columns = collect_items(sources, reserved_columns=(*COLUMNS, "backend"))
    writer = DatasetWriter.open(output, dataset_identity(bundle), metadata_columns, shard_rows, commit_seconds)
    options = {"bundle": bundle, "backend": backend, "workers": workers, "threads": threads, "batch": batch,
               "progress": progress}
    try:
        with terminate_as_interrupt():
            if ray_address is None:
                from meltok_runtime.dataset.local_job import tokenize_local

                return tokenize_local(items, writer, **options)
            from meltok_runtime.dataset.ray_job import tokenize_ray

            return tokenize_ray(items, writer, address=ray_address, actors_per_gpu=actors_per_gpu, **options)
    finally:
        writer.release()  # after a fault or an interrupt too, so that this process can resume at once


@contextlib.contextmanager
def terminate_as_interrupt():
    """In the main thread: SIGTERM raises ``KeyboardInterrupt`` (as Ctrl-C does) until the block ends.

    Elsewhere (signal handlers belong to the main thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
