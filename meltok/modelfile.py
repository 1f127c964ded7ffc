"""Model files: safetensors weights with the JSON config in the metadata, never pickle.

The model id rule. An id is ``NAME:HASH12``: the config's name and the first 12 hex digits of
``SHA-256(weights_sha256 + "|" + canonical architecture)``, so equal ids mean equal weights and
architecture whatever the files are called.

- ``weights_sha256`` is ``weights_hash``: key names, dtypes, shapes and bytes in sorted key order.
- The canonical architecture (``canonical_architecture``) is the config written in the form of
  config version 1: ``{"config_version": 1, "name", "frontend", "tokenizer", "vocoder"}`` as JSON
  with sorted keys, where every field that config version 1 did not have
  (``FIRST_VERSION_FIELDS`` lists the ones it had) is left out while it holds its default value.
  So adding a field with a default later (``time_local``, ``attention_radius``, a vocoder
  ``head``...) changes no id; setting it to another value does. ``FIRST_VERSION_FIELDS`` never
  changes: a new field needs no entry anywhere.
- An id recorded in a model file is kept when the model is saved again with the same weights and
  canonical architecture. Files written before this rule carry ``NAME:`` + the first 12 digits of
  the weights' hash alone (the shipped model: ``meltok-edge:e219538591c9``); loading uses the
  stored id and re-saving keeps it, so token files and datasets made with them stay decodable.
"""
from __future__ import annotations

import dataclasses
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

# The fields of config version 1, per section; the canonical architecture keeps any other field only
# while it differs from its default. Never edit: ids of existing models depend on it.
FIRST_VERSION_FIELDS = {
    "frontend": ("sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max", "log_floor", "mel_scale"),
    "tokenizer": ("channels", "channels_mult", "encoder_blocks", "decoder_blocks", "attn_resolutions", "resolution",
                  "patch_size", "z_channels", "embedding_dim", "codebook_size", "num_groups"),
    "vocoder": ("dim", "intermediate_dim", "num_layers", "n_fft", "hop_length", "max_magnitude"),
}


def weights_hash(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over key names, dtypes, shapes and bytes, in sorted key order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _canonical_section(name: str, section) -> dict:
    """One config section as a dict, fields added after config version 1 left out while at their default."""
    kept = {}
    for field in dataclasses.fields(section):
        value = getattr(section, field.name)
        if field.name in FIRST_VERSION_FIELDS[name] or value != field.default:
            kept[field.name] = list(value) if isinstance(value, tuple) else value
    return kept


def canonical_architecture(config: MelTokConfig) -> str:
    """The architecture as hashed into model ids (the rule in this module's docstring)."""
    form = {"config_version": 1, "name": config.name,
            **{name: _canonical_section(name, getattr(config, name)) for name in FIRST_VERSION_FIELDS}}
    return json.dumps(form, sort_keys=True)


def architecture_digest(config: MelTokConfig, weights_sha256: str) -> str:
    """SHA-256 (hex) over weights (their ``weights_hash``) and the canonical architecture."""
    return hashlib.sha256(f"{weights_sha256}|{canonical_architecture(config)}".encode()).hexdigest()


def model_id_of(config: MelTokConfig, weights_sha256: str) -> str:
    """The model id ``NAME:HASH12`` of weights (their ``weights_hash``) under ``config``."""
    return f"{config.name}:{architecture_digest(config, weights_sha256)[:12]}"


def save_model_file(model, path) -> str:
    """Write ``model`` to ``path`` atomically; returns (and sets) its model id: the id it was loaded with
    when weights and canonical architecture are unchanged since, else ``model_id_of``."""
    state = {key: value.detach().cpu().contiguous().clone() for key, value in model.state_dict().items()}
    digest = weights_hash(state)
    basis = architecture_digest(model.config, digest)
    if getattr(model, "model_id_basis", None) != basis:
        model.model_id = model_id_of(model.config, digest)
        model.model_id_basis = basis
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
    model.model_id_basis = architecture_digest(config, metadata["weights_sha256"])
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
