"""The tokenize job on Ray Data: the same items, rows, shards and journal as the local job.

Pipeline: ``from_items`` (ids and paths of the items not yet done) -> ``map`` (read, decode,
resample, check: one stage, ``read_cpus`` CPUs per task) -> ``map_batches`` on an actor pool of
``workers`` actors, each holding one ``Codec`` -> rows streamed back to this process, which writes
the shards with ``DatasetWriter`` exactly as the local job does, so resume semantics are the same.

Actors are sized from the cluster's nodes (``ray.nodes()``), never from this driver's cores, which
may exceed every node and leave actors unplaced (``size_actors``): each actor runs ``threads`` ONNX
Runtime threads and reserves ``threads - read_cpus`` CPUs (at least 0.5), so that an actor and a
read task fit in its threads on one node (on 2 CPUs: one actor of 1.5 and reads of 0.5); without
``threads``, the cluster's CPUs are shared out among ``workers``, then lowered until the actors fit
on the nodes. For ``ort-cuda``/``trt`` each actor also reserves ``1 / actors_per_gpu`` GPU.
A job the nodes cannot hold is refused before any work (``ClusterError``).

``address`` ``"local"`` starts a local Ray instance (and shuts it down at the end); another
address joins that cluster (``ray.init(address=...)``, e.g. ``"auto"`` or ``"ray://head:10001"``).
An item whose own data is bad is recorded; any other failure inside Ray (an actor died, out of
memory, a backend error) stops the job with ``WorkerError`` and the items in flight are done again
on resume.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from meltok_runtime.dataset.items import JobProgress, encode_group, job_fault, load_item, make_row, peak_rss_mb
from meltok_runtime.dataset.sources import Item
from meltok_runtime.errors import ClusterError, ItemError, MeltokError, ModelMismatchError
from meltok_runtime.optional import import_optional

GPU_BACKENDS = ("ort-cuda", "trt")
INSTALL = "pip install -e '.[ray]' (ray[data]), in the clone's folder"


@dataclass(frozen=True)
class ActorSize:
    """What each encoder actor runs and reserves: ONNX Runtime ``threads``, ``num_cpus``, ``num_gpus``."""

    threads: int
    num_cpus: float
    num_gpus: float


def size_actors(nodes: list, workers: int, *, threads: int | None = None, read_cpus: float = 0.5,
                gpus_per_actor: float = 0.0) -> ActorSize:
    """Size ``workers`` encoder actors to fit the cluster's ``nodes`` (``ray.nodes()`` entries:
    ``{"Alive": bool, "Resources": {"CPU": n, "GPU": g}}``); ClusterError when they cannot fit.

    Each node holding actors keeps ``read_cpus`` free for a read task. ``threads`` given: that many per
    actor, or refused; else the cluster's CPUs shared out among the actors, lowered until they fit.
    """
    resources = [node.get("Resources", {}) for node in nodes if node.get("Alive", True)]
    cpus = [float(node.get("CPU", 0)) for node in resources]
    if not cpus or max(cpus) < 1:
        raise ClusterError("the Ray cluster has no live node with a CPU; start workers with 'ray start "
                           "--address=HEAD' or check the cluster with 'ray status'")

    def capacity(actor_cpus: float) -> int:
        total = 0
        for node, node_cpus in zip(resources, cpus):
            fit = math.floor((node_cpus - read_cpus) / actor_cpus + 1e-9) if node_cpus >= actor_cpus + read_cpus else 0
            if gpus_per_actor:
                fit = min(fit, math.floor(float(node.get("GPU", 0)) / gpus_per_actor + 1e-9))
            total += fit
        return total

    shared = max(1, min(int(max(cpus)), int(sum(cpus) // workers)))
    for candidate in [threads] if threads is not None else range(shared, 0, -1):
        size = ActorSize(candidate, max(0.5, candidate - read_cpus), gpus_per_actor)
        if capacity(size.num_cpus) >= workers:
            return size
    most = capacity(size.num_cpus)
    gpu_text = f" and {gpus_per_actor:g} GPU" if gpus_per_actor else ""
    nodes_text = ", ".join(f"{node_cpus:g} CPU" + (f" {float(node.get('GPU', 0)):g} GPU" if gpus_per_actor else "")
                           for node, node_cpus in zip(resources, cpus))
    fewer_threads = ", or fewer --threads" if threads is not None else ""
    raise ClusterError(f"the Ray cluster's nodes ({nodes_text}) hold at most {most} encoder actor(s) of "
                       f"{size.threads} thread(s){gpu_text}, {workers} asked; pass --workers {max(most, 1)} or "
                       f"fewer{fewer_threads}, or add nodes")


def read_stage(row: dict, sample_rate: int, min_samples: int, hop_length: int) -> dict:
    """Ray ``map`` function: one item row -> its audio (float32 bytes) or the reason it cannot be used."""
    item = Item(row["id"], row["path"])
    try:
        loaded = load_item(item, sample_rate, min_samples, hop_length)
    except ItemError as error:  # anything else fails the task: a fault of the job, not of the item
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
            except ItemError as error:  # the audio itself; other errors fail the actor's task and stop the job
                for index, _ in group:
                    out["reason"][index] = str(error)
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
    pending = {item.id: item for item in items if item.id not in writer.done}
    if not pending:
        return writer.close(complete=True)
    stats = JobProgress(len(pending), sum(item.size for item in pending.values()))
    started_here = not ray.is_initialized()
    if started_here:
        _connect(ray, address)
    try:
        size = size_actors(ray.nodes(), workers, threads=threads, read_cpus=read_cpus,
                           gpus_per_actor=1 / actors_per_gpu if backend in GPU_BACKENDS else 0.0)
        logging.getLogger("meltok_runtime").info("%d encoder actor(s) of %d thread(s), %g CPU and %g GPU each",
                                                 workers, size.threads, size.num_cpus, size.num_gpus)
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
                                              "threads": size.threads, "model_id": manifest.model_id},
            compute=ray.data.ActorPoolStrategy(size=workers), batch_size=batch, batch_format="numpy",
            num_cpus=size.num_cpus, num_gpus=size.num_gpus)
        dtype = writer.dtype
        for row in _rows(dataset):
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


def _rows(dataset):
    """The rows of ``dataset``; a failure inside Ray stops the job: the ``MeltokError`` it carries (e.g. another
    bundle on a node), else a ``WorkerError`` (an actor died, out of memory, a backend error)."""
    rows = iter(dataset.iter_rows())
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as error:  # noqa: BLE001 - Ray wraps what failed in its own exception types
            cause = _root_cause(error)
            if isinstance(cause, MeltokError):
                raise cause from None
            raise job_fault(cause, "a Ray read task or encoder actor") from error
        yield row


def _root_cause(error: BaseException) -> BaseException:
    """The innermost exception Ray wrapped (``RayTaskError.cause``, then ``__cause__``)."""
    seen = {id(error)}
    while True:
        inner = getattr(error, "cause", None) or error.__cause__
        if not isinstance(inner, BaseException) or id(inner) in seen:
            return error
        seen.add(id(inner))
        error = inner


def _connect(ray, address: str) -> None:
    """Start a local Ray instance (``"local"``) or join the cluster at ``address``."""
    try:
        ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ClusterError(f"cannot start or reach Ray at {address!r} ({reason}); start a cluster with 'ray start "
                           "--head', pass its address, or use --ray alone for a local instance") from None
