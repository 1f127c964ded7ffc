"""Shared test fixtures: the official-format reference fixture and the real audio clips in ``tests/data``."""
from pathlib import Path

import numpy as np
import pytest

DATA_DIR = Path(__file__).resolve().parent / "data"
OFFICIAL_TINY_DIR = DATA_DIR / "official-tiny"


@pytest.fixture(scope="session")
def official_tiny_dir() -> Path:
    """Folder of the official-format reference fixture (checkpoints and ``io.npz``; see its PROVENANCE.md)."""
    return OFFICIAL_TINY_DIR


@pytest.fixture(scope="session")
def golden_io(official_tiny_dir) -> dict:
    """The reference tensors of ``io.npz`` (``audio`` float32 [1, 44100], ``mel``, ``tokens``, ...)."""
    with np.load(official_tiny_dir / "io.npz") as data:
        return dict(data)


REAL_CLIPS = {"music": "music.flac", "speech": "speech.flac", "effects": "effects.flac",
              "music48k": "music48k.flac", "long_music": "long_music.ogg"}


@pytest.fixture(scope="session")
def real_clip_paths() -> dict:
    """Paths of the real audio clips shipped in ``tests/data`` (see its LICENSES.md)."""
    return {name: DATA_DIR / file for name, file in REAL_CLIPS.items()}


@pytest.fixture(scope="session")
def real_clips(real_clip_paths) -> dict:
    """The 44.1 kHz clips as mono float32 ``[N]`` arrays (``music48k`` and ``long_music`` left out)."""
    import soundfile as sf

    clips = {}
    for name in ("music", "speech", "effects"):
        audio, rate = sf.read(real_clip_paths[name], dtype="float32", always_2d=True)
        assert rate == 44100, f"{name} should be a 44.1 kHz clip"
        clips[name] = audio.mean(axis=1)
    return clips


@pytest.fixture(scope="session")
def tiny_local_model():
    """The seeded time-local tiny preset, its codebook spread (normal, std 0.5) so that random latents
    pick many codes without near-ties."""
    import torch

    from meltok import MelTok

    torch.manual_seed(0)
    model = MelTok.from_config("tiny-local")
    torch.nn.init.normal_(model.quantizer.embedding.weight, 0, 0.5)
    return model


@pytest.fixture(scope="session")
def tiny_local_bundle(tmp_path_factory, tiny_local_model):
    """``(model, bundle folder)``: the time-local tiny model and its fp32 bundle from export_bundle."""
    from meltok_export.bundle import export_bundle

    tiny_local_model.save(tmp_path_factory.mktemp("models") / "tiny-local.safetensors")  # sets its model id
    out = tmp_path_factory.mktemp("bundles") / "tiny-local"
    export_bundle(tiny_local_model, out, verify_seconds=1.0, max_seconds=12.0, opt_seconds=4.0, max_batch=4)
    return tiny_local_model, out


@pytest.fixture(scope="session")
def tiny_mel_inversion(tmp_path_factory):
    """``(model, model file, bundle folder)``: the seeded tiny preset (codebook spread: normal, std 0.5) turned
    into a ``mel_inversion`` model (its decoder's log-mel -> ``MelInverter``), saved, and exported to an fp32
    bundle by ``export_bundle`` (graphs verified against torch)."""
    import torch

    from meltok import MelTok
    from meltok_export.bundle import export_bundle

    torch.manual_seed(0)
    model = MelTok.from_config("tiny")
    torch.nn.init.normal_(model.quantizer.embedding.weight, 0, 0.5)
    model = model.with_vocoder_head("mel_inversion")
    path = tmp_path_factory.mktemp("models") / "tiny-mel-inversion.safetensors"
    model.save(path)  # sets its model id
    out = tmp_path_factory.mktemp("bundles") / "tiny-mel-inversion"
    export_bundle(model, out, verify_seconds=1.0, max_seconds=12.0, opt_seconds=4.0, max_batch=4)
    return model, path, out
