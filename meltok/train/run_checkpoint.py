"""Resumable training checkpoints: atomic folders of size-limited shards, loadable with
``torch.load(weights_only=True)``.

Layout of ``RUN/checkpoints/step-000001000/``::

    index.json     format, version, step, epoch, stage, config, shards (bytes, sha256), split tensors
    state.pt       the checkpoint's structure: nested dicts/lists of numbers and strings, where
                   each tensor is replaced by ``{"__tensor__": NAME}``
    shard-00000.pt ...  ``{NAME: tensor}`` dicts, each file at most ``shard_mib`` MiB; a tensor
                   larger than that is stored flat in parts ``NAME@0``, ``NAME@1``, ...

The folder is written under a temporary name and renamed when complete
(``runtime.atomic.atomic_directory``), so an interrupted or failed write leaves the previous
checkpoints as they were. Every file holds only tensors, numbers, strings, lists, tuples
and dicts, so loading never unpickles arbitrary objects. Older checkpoints beyond ``keep``
are removed only after a new one is complete.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path

import torch

from meltok_runtime.io.atomic import atomic_directory
from meltok_runtime.errors import ModelFileError
from meltok_runtime.manifest import file_sha256

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "meltok-train-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_INDEX = "index.json"  # a complete checkpoint folder has it (written last)
_NAME = re.compile(r"^step-(\d{9})$")
_TENSOR_OVERHEAD = 1024  # bytes a torch.save zip record costs beyond the data (measured: ~300-700)
_FILE_OVERHEAD = 16 * 1024


def checkpoint_dir(run_dir) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as ``[(step, folder)]``, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match and (entry / CHECKPOINT_INDEX).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(run_dir) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


# ----------------------------------------------------------------------------- flattening
def _flatten(obj, tensors: dict, path: str):
    if isinstance(obj, torch.Tensor):
        name = path or "tensor"
        while name in tensors:
            name += "_"
        tensors[name] = obj
        return {"__tensor__": name}
    if isinstance(obj, dict):
        return {key: _flatten(value, tensors, f"{path}/{key}" if path else str(key)) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_flatten(value, tensors, f"{path}/{i}" if path else str(i)) for i, value in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint state at {path!r} holds a {type(obj).__name__}; only tensors, numbers, "
                    "strings, lists, tuples and dicts are allowed (so that weights_only loading works)")


def _unflatten(obj, tensors: dict):
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {key: _unflatten(value, tensors) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(value, tensors) for value in obj]
    if isinstance(obj, tuple):
        return tuple(_unflatten(value, tensors) for value in obj)
    return obj


def _plain_cpu(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU tensor that owns exactly its data (torch.save writes a view's whole storage)."""
    tensor = tensor.detach().cpu()
    if not tensor.is_contiguous() or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.contiguous().clone()
    return tensor


def _pack(tensors: dict[str, torch.Tensor], limit: int | None) -> tuple[list[dict], dict]:
    """Group tensors into shards of at most ``limit`` bytes; split larger ones into flat parts."""
    shards: list[dict] = [{}]
    sizes = [_FILE_OVERHEAD]
    split: dict[str, dict] = {}
    part_bytes = None if limit is None else max(1024, limit - _FILE_OVERHEAD - _TENSOR_OVERHEAD)
    for name, tensor in tensors.items():
        tensor = _plain_cpu(tensor)
        nbytes = tensor.numel() * tensor.element_size()
        pieces = [(name, tensor)]
        if part_bytes is not None and nbytes > part_bytes:
            per_part = max(1, part_bytes // tensor.element_size())
            flat = tensor.reshape(-1)
            pieces = [(f"{name}@{i}", flat[start:start + per_part].clone())
                      for i, start in enumerate(range(0, flat.numel(), per_part))]
            split[name] = {"shape": list(tensor.shape), "parts": len(pieces)}
        for piece_name, piece in pieces:
            size = piece.numel() * piece.element_size() + _TENSOR_OVERHEAD
            if limit is not None and shards[-1] and sizes[-1] + size > limit:
                shards.append({})
                sizes.append(_FILE_OVERHEAD)
            shards[-1][piece_name] = piece
            sizes[-1] += size
    return shards, split


# ----------------------------------------------------------------------------- save / load
def save_checkpoint(run_dir, state: dict, *, step: int, shard_mib: float = 15.0, keep: int = 2,
                    meta: dict | None = None) -> Path:
    """Write ``state`` (nested dicts/lists of tensors and plain values) as the checkpoint of
    ``step``; returns its folder. ``shard_mib`` 0 writes one shard. ``meta`` (JSON-able:
    epoch, stage, config) goes into ``index.json``. Keeps the newest ``keep`` checkpoints."""
    started = time.perf_counter()
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step-{step:09d}"
    limit = int(shard_mib * 2 ** 20) if shard_mib else None
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors, "")
    shards, split = _pack(tensors, limit)
    with atomic_directory(target) as tmp:
        torch.save(skeleton, tmp / "state.pt")
        records = []
        for index, shard in enumerate(shards):
            path = tmp / f"shard-{index:05d}.pt"
            torch.save(shard, path)
            size = path.stat().st_size
            if limit is not None and size > limit:
                raise RuntimeError(f"checkpoint shard {path.name} has {size} bytes, over the {limit}-byte "
                                   "limit; this is a bug in the shard packing")
            records.append({"file": path.name, "bytes": size, "sha256": file_sha256(path), "tensors": len(shard)})
        index = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": int(step),
                 "shard_mib": shard_mib, "state": {"file": "state.pt", "sha256": file_sha256(tmp / "state.pt")},
                 "shards": records, "split_tensors": split, **(meta or {})}
        (tmp / CHECKPOINT_INDEX).write_text(json.dumps(index, indent=1), encoding="utf-8")
    for _, old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    total = sum(r["bytes"] for r in records)
    log.info("checkpoint %s: %d shard(s), %.1f MiB, %.1f s", target.name, len(records), total / 2 ** 20,
             time.perf_counter() - started)
    return target


def read_index(folder) -> dict:
    folder = Path(folder)
    try:
        index = json.loads((folder / CHECKPOINT_INDEX).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ModelFileError(f"cannot read {str(folder / 'index.json')!r} ({error}); not a complete checkpoint")
    if index.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{str(folder)!r} is not a meltok training checkpoint")
    if int(index.get("version", 0)) > CHECKPOINT_VERSION:
        raise ModelFileError(f"checkpoint {str(folder)!r} has version {index['version']}; this meltok reads up "
                             f"to {CHECKPOINT_VERSION}: upgrade meltok")
    return index


def _load_file(path: Path, sha256: str | None, verify: bool):
    if not path.is_file():
        raise ModelFileError(f"checkpoint file {str(path)!r} is missing; the checkpoint is incomplete")
    if verify and sha256 and file_sha256(path) != sha256:
        raise ModelFileError(f"checkpoint file {str(path)!r} does not match its recorded sha256; it is corrupt")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for damaged zips / foreign pickles
        raise ModelFileError(f"cannot read checkpoint file {str(path)!r} ({str(error).splitlines()[0][:160]})")


def load_checkpoint(folder, *, verify: bool = True) -> tuple[dict, dict]:
    """``(state, index)`` of a checkpoint folder; tensors on the CPU."""
    folder = Path(folder)
    index = read_index(folder)
    tensors: dict[str, torch.Tensor] = {}
    for record in index["shards"]:
        tensors.update(_load_file(folder / record["file"], record.get("sha256"), verify))
    for name, info in index.get("split_tensors", {}).items():
        parts = [tensors.pop(f"{name}@{i}") for i in range(info["parts"])]
        tensors[name] = torch.cat(parts).reshape(info["shape"])
    skeleton = _load_file(folder / index["state"]["file"], index["state"].get("sha256"), verify)
    return _unflatten(skeleton, tensors), index
