"""``tokenize``: sources -> items -> a dataset folder, on local workers or on Ray.

>>> from meltok_runtime.dataset.job import tokenize
>>> summary = tokenize(["music/", "list.csv"], "dataset/", workers=2)          # local processes
>>> summary = tokenize(["music/"], "dataset/", ray_address="auto", workers=8)   # an existing Ray cluster

Running the same call again on the same folder resumes it (see ``dataset_writer``).
"""
from __future__ import annotations

from meltok_runtime.dataset.items import dataset_identity
from meltok_runtime.dataset.sources import collect_items
from meltok_runtime.dataset.reader import COLUMNS
from meltok_runtime.dataset.writer import DatasetWriter


def tokenize(sources, output, *, bundle=None, backend: str = "auto", workers: int = 1, threads: int | None = None,
             shard_rows: int = 1000, batch: int = 8, ray_address: str | None = None, actors_per_gpu: int = 2,
             progress=None) -> dict:
    """Tokenize every item of ``sources`` into the dataset folder ``output``; returns its summary
    (``dataset.json``). ``ray_address``: None runs locally, ``"local"`` on a local Ray instance,
    anything else joins that Ray cluster (``actors_per_gpu`` applies there)."""
    if workers < 1 or shard_rows < 1 or batch < 1:
        raise ValueError(f"need workers, shard_rows and batch >= 1, got {workers}, {shard_rows}, {batch}")
    items, metadata_columns = collect_items(sources, reserved_columns=(*COLUMNS, "backend"))
    writer = DatasetWriter.open(output, dataset_identity(bundle), metadata_columns, shard_rows)
    options = {"bundle": bundle, "backend": backend, "workers": workers, "threads": threads, "batch": batch,
               "progress": progress}
    if ray_address is None:
        from meltok_runtime.dataset.local_job import tokenize_local

        return tokenize_local(items, writer, **options)
    from meltok_runtime.dataset.ray_job import tokenize_ray

    return tokenize_ray(items, writer, address=ray_address, actors_per_gpu=actors_per_gpu, **options)
