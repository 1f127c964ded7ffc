"""The tokenize job on Ray Data: the same items, rows, shards and journal as the local job.

Pipeline: ``from_items`` (ids and paths of the items not yet done) -> ``map`` (read, decode,
resample, check: one stage, ``read_cpus`` CPUs per task) -> ``map_batches`` on an actor pool of
``workers`` actors, each holding one ``Codec`` with ``threads`` ONNX Runtime threads (default: this
machine's cores / workers) and reserving ``threads - read_cpus`` CPUs (at least 0.5), so that an
actor and a read task fit in its threads (on 2 CPUs: one actor of 1.5 and reads of 0.5); for
``ort-cuda``/``trt`` each actor also reserves ``1 / actors_per_gpu`` GPU -> rows streamed back to this process, which writes the shards
with ``DatasetWriter`` exactly as the local job does, so resume semantics are the same.
``address`` ``"local"`` starts a local Ray instance (and shuts it down at the end); another
address joins that cluster (``ray.init(address=...)``, e.g. ``"auto"`` or ``"ray://head:10001"``).
"""
from __future__ import annotations

import logging

import numpy as np

from meltok_runtime.dataset.items import ItemError, JobProgress, encode_group, load_item, make_row, peak_rss_mb
from meltok_runtime.dataset.local_job import worker_threads
from meltok_runtime.dataset.sources import Item
from meltok_runtime.errors import MeltokError, ModelMismatchError
from meltok_runtime.optional import import_optional

GPU_BACKENDS = ("ort-cuda", "trt")


class ClusterError(MeltokError, RuntimeError):
    """Ray could not be started or reached at the given address."""
INSTALL = "pip install -e '.[ray]' (ray[data]), in the clone's folder"


def read_stage(row: dict, sample_rate: int, min_samples: int, hop_length: int) -> dict:
    """Ray ``map`` function: one item row -> its audio (float32 bytes) or the reason it cannot be used."""
    item = Item(row["id"], row["path"])
    try:
        loaded = load_item(item, sample_rate, min_samples, hop_length)
    except ItemError as error:
        return {"id": item.id, "audio": b"", "sample_rate": 0, "channels": 0, "reason": str(error)}
    return {"id": item.id, "audio": loaded.audio.tobytes(), "sample_rate": loaded.sample_rate,
            "channels": loaded.channels, "reason": ""}


class EncodeStage:
    """Ray actor: holds one Codec; a batch of read rows -> tokens (bytes), items of equal length encoded together."""

    def __init__(self, bundle, backend: str, threads: int | None, model_id: str):
        from meltok_runtime.codec import Codec

        self.codec = Codec.open(bundle, backend=backend, threads=threads)
        if self.codec.model_id != model_id:  # e.g. another meltok version's default bundle on a worker node
            raise ModelMismatchError(f"this Ray worker's bundle holds {self.codec.model_id}, the job tokenizes with "
                                     f"{model_id}; install the same meltok and bundle on every node")

    def __call__(self, batch: dict) -> dict:
        count = len(batch["id"])
        out = {"id": list(batch["id"]), "reason": list(batch["reason"]), "tokens": [b""] * count,
               "num_samples": [0] * count, "sample_rate": list(batch["sample_rate"]),
               "channels": list(batch["channels"])}
        by_length = {}
        for index in range(count):
            if not out["reason"][index]:
                audio = np.frombuffer(batch["audio"][index], dtype=np.float32)
                by_length.setdefault(audio.shape[-1], []).append((index, audio))
        for group in by_length.values():
            try:
                tokens = encode_group(self.codec, [audio for _, audio in group])
            except Exception as error:  # noqa: BLE001 - an item the encoder refuses is recorded, not fatal
                for index, _ in group:
                    out["reason"][index] = f"{type(error).__name__}: {error}".splitlines()[0]
                continue
            for (index, audio), item_tokens in zip(group, tokens):
                out["tokens"][index], out["num_samples"][index] = item_tokens.tobytes(), audio.shape[-1]
        out["backend"] = [self.codec.backend] * count
        out["peak_rss_mb"] = [peak_rss_mb()] * count
        return out


def tokenize_ray(items, writer, *, address: str = "local", bundle=None, backend: str = "auto", workers: int = 1,
                 threads: int | None = None, batch: int = 8, read_cpus: float = 0.5, actors_per_gpu: int = 2,
                 progress=None) -> dict:
    """Tokenize the ``items`` not yet done in ``writer``'s dataset with Ray Data; returns the dataset summary."""
    ray = import_optional("ray", install=INSTALL, purpose="the Ray tokenize job")
    import_optional("ray.data", install=INSTALL, purpose="the Ray tokenize job")
    from meltok_runtime.codec import default_bundle
    from meltok_runtime.manifest import load_manifest

    manifest = load_manifest(default_bundle() if bundle is None else bundle)
    threads = worker_threads(workers, threads)
    pending = {item.id: item for item in items if item.id not in writer.done}
    if not pending:
        return writer.close(complete=True)
    stats = JobProgress(len(pending), sum(item.size for item in pending.values()))
    started_here = not ray.is_initialized()
    if started_here:
        _connect(ray, address)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False  # the caller's ``progress`` reports
        if not logging.getLogger("meltok_runtime").isEnabledFor(logging.INFO):
            logging.getLogger("ray.data").setLevel(logging.ERROR)  # Ray Data's plan and timing lines only with -v
        records = [{"id": item.id, "path": item.path} for item in pending.values()]
        dataset = ray.data.from_items(records).map(
            read_stage, fn_kwargs={"sample_rate": manifest.sample_rate,
                                   "min_samples": manifest.hop_length * manifest.compression,
                                   "hop_length": manifest.hop_length}, num_cpus=read_cpus)
        dataset = dataset.map_batches(
            EncodeStage, fn_constructor_kwargs={"bundle": None if bundle is None else str(bundle), "backend": backend,
                                              "threads": threads, "model_id": manifest.model_id},
            compute=ray.data.ActorPoolStrategy(size=workers), batch_size=batch, batch_format="numpy",
            num_cpus=max(0.5, threads - read_cpus), num_gpus=1 / actors_per_gpu if backend in GPU_BACKENDS else 0)
        dtype = writer.dtype
        for row in dataset.iter_rows():
            item = pending[row["id"]]
            if row["reason"]:
                writer.fail(item.id, item.path, row["reason"])
                stats.record(item, failed=True)
            else:
                tokens = np.frombuffer(row["tokens"], dtype=dtype).reshape(manifest.token_rows, -1)
                num_samples = int(row["num_samples"])
                writer.add(make_row(item, tokens, num_samples=num_samples, source_rate=int(row["sample_rate"]),
                                    channels=int(row["channels"]), sample_rate=manifest.sample_rate,
                                    model_id=manifest.model_id, backend=row["backend"]))
                stats.record(item, num_samples / manifest.sample_rate)
                stats.worker_peak_rss_mb = max(stats.worker_peak_rss_mb, float(row["peak_rss_mb"]))
            if progress is not None:
                progress(stats)
    except BaseException:
        writer.commit()
        raise
    finally:
        if started_here:
            ray.shutdown()
    return writer.close(complete=True)


def _connect(ray, address: str) -> None:
    """Start a local Ray instance (``"local"``) or join the cluster at ``address``."""
    try:
        ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ClusterError(f"cannot start or reach Ray at {address!r} ({reason}); start a cluster with 'ray start "
                           "--head', pass its address, or use --ray alone for a local instance") from None
