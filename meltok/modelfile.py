"""Model files: safetensors weights with the JSON config in the metadata, never pickle.

A model id is ``NAME:HASH12``: the config's name and the first 12 hex digits of a SHA-256 over
the weights' hash and the architecture (the config JSON), so equal ids mean equal weights and
architecture whatever the files are called. Files written before this scheme keep the id stored
in them (``NAME:`` + the weights' hash alone, e.g. the shipped model): loading always uses the
stored id, so token files made with them stay decodable.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from meltok_runtime.io.atomic import atomic_output
from meltok_runtime.errors import ModelFileError

from .config import MelTokConfig

MODEL_FORMAT = "meltok-model"
MODEL_FORMAT_VERSION = 1


def weights_hash(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over key names, dtypes, shapes and bytes, in sorted key order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_id_of(config: MelTokConfig, weights_sha256: str) -> str:
    """The model id ``NAME:HASH12`` of weights (their ``weights_hash``) under ``config``."""
    digest = hashlib.sha256(f"{weights_sha256}|{config.to_json()}".encode()).hexdigest()
    return f"{config.name}:{digest[:12]}"


def save_model_file(model, path) -> str:
    """Write ``model`` to ``path`` atomically; returns (and sets) its model id."""
    state = {key: value.detach().cpu().contiguous().clone() for key, value in model.state_dict().items()}
    digest = weights_hash(state)
    model.model_id = model_id_of(model.config, digest)
    metadata = {"format": MODEL_FORMAT, "format_version": str(MODEL_FORMAT_VERSION),
                "config": model.config.to_json(), "weights_sha256": digest, "model_id": model.model_id}
    with atomic_output(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return model.model_id


def read_model_metadata(path) -> dict:
    """The JSON-decoded metadata of a model file, without loading its weights."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {str(path)!r} does not exist or is not a file")
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if size <= 0 or size > 100_000_000:
                raise ValueError("bad header size")
            header = json.loads(handle.read(size))
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelFileError(f"{str(path)!r} is not a meltok model file (not safetensors: {error})")
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{str(path)!r} is a safetensors file but not a meltok model "
                             "(convert official checkpoints with `meltok convert`)")
    version = int(metadata.get("format_version", "0"))
    if version > MODEL_FORMAT_VERSION:
        raise ModelFileError(f"{str(path)!r} has model format version {version}; this meltok reads up to "
                             f"{MODEL_FORMAT_VERSION}: upgrade meltok")
    return metadata


def load_model_file(cls, path, *, device="cpu"):
    """Build ``cls`` from a model file, checking the weights against their recorded hash."""
    metadata = read_model_metadata(path)
    config = MelTokConfig.from_json(metadata["config"])
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as error:
        raise ModelFileError(f"cannot read the weights of {str(path)!r} ({error}); the file is corrupt")
    if weights_hash(state) != metadata.get("weights_sha256"):
        raise ModelFileError(f"the weights of {str(path)!r} do not match their recorded hash; the file is "
                             "corrupt or was modified: re-download or re-convert it")
    model = cls(config)
    load_state(model, state, source=str(path))
    model.model_id = metadata["model_id"]
    return model.to(device)


def load_state(model, state: dict, source: str) -> None:
    """Load ``state`` into ``model``, refusing missing, unexpected or misshapen tensors."""
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ModelFileError(f"{source}: state does not fit the architecture; missing keys {missing[:8]}"
                             f"{'...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
                             f"{'...' if len(unexpected) > 8 else ''}")
    for key, value in model.state_dict().items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ModelFileError(f"{source}: {key} has shape {tuple(state[key].shape)}, expected {tuple(value.shape)}")
    model.load_state_dict(state, strict=True)
