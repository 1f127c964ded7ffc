"""Runtime test fixtures: tiny bundles exported once per session, and real audio.

Bundles are built here with plain ``torch.onnx.export`` from wrapper modules around the torch
``MelTok`` (the runtime itself never imports torch; only these fixtures do), or with
``meltok_export.bundle.export_bundle`` where that exists and ``MELTOK_TEST_OWN_EXPORT`` is unset.
"""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1] / "data"
LONG_MUSIC = DATA / "long_music.ogg"


def _export_bundle_with_torch(model, folder: Path) -> Path:
    """A minimal bundle (fp32 encoder/decoder ONNX + manifest) as meltok-export would write it."""
    import torch

    from meltok_runtime.manifest import GraphEntry, Manifest, file_sha256

    class Encoder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, audio):
            return self.inner.tokenize(audio).to(torch.int32)

    class Decoder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, tokens):
            return self.inner.detokenize(tokens)

    folder.mkdir(parents=True)
    rows, hop = model.token_rows, model.hop_length
    compression = model.config.tokenizer.compression
    audio = torch.zeros(1, (compression * 4 - 1) * hop)
    tokens = torch.zeros(1, rows, 4, dtype=torch.int32)
    with torch.no_grad():
        torch.onnx.export(Encoder(model).eval(), (audio,), str(folder / "encoder.onnx"), dynamo=False,
                          opset_version=17, input_names=["audio"], output_names=["tokens"],
                          dynamic_axes={"audio": {0: "batch", 1: "samples"}, "tokens": {0: "batch", 2: "columns"}})
        torch.onnx.export(Decoder(model).eval(), (tokens,), str(folder / "decoder.onnx"), dynamo=False,
                          opset_version=17, input_names=["tokens"], output_names=["audio"],
                          dynamic_axes={"tokens": {0: "batch", 2: "columns"}, "audio": {0: "batch", 1: "samples"}})
    graphs = {
        "encoder": GraphEntry(file="encoder.onnx", sha256=file_sha256(folder / "encoder.onnx"), precision="fp32",
                              inputs=[{"name": "audio", "dtype": "float32", "shape": ["batch", "samples"]}],
                              outputs=[{"name": "tokens", "dtype": "int32", "shape": ["batch", rows, "columns"]}]),
        "decoder": GraphEntry(file="decoder.onnx", sha256=file_sha256(folder / "decoder.onnx"), precision="fp32",
                              inputs=[{"name": "tokens", "dtype": "int32", "shape": ["batch", rows, "columns"]}],
                              outputs=[{"name": "audio", "dtype": "float32", "shape": ["batch", "samples"]}]),
    }
    Manifest(model_id=model.model_id, model_name=model.config.name, model_sha256="0" * 64,
             sample_rate=model.sample_rate, hop_length=hop, n_mels=model.config.frontend.n_mels, token_rows=rows,
             codebook_size=model.codebook_size, compression=compression, opset=17, graphs=graphs,
             versions={"torch": torch.__version__}).write(folder)
    return folder


def export_bundle(model, folder: Path) -> Path:
    if not os.environ.get("MELTOK_TEST_OWN_EXPORT"):
        try:
            from meltok_export.bundle import export_bundle as exporter
        except ImportError:
            exporter = None
        if exporter is not None:
            exporter(model, folder, verify_seconds=1.0)  # the export tests verify at full length
            return folder
    return _export_bundle_with_torch(model, folder)


@pytest.fixture(scope="session")
def tiny_model():
    """The seeded ``tiny`` preset (random weights) as a torch MelTok, its codebook spread out so
    that the VQ choices have margins like a trained model's rather than near-ties."""
    import torch

    from meltok import MelTok

    torch.manual_seed(0)
    model = MelTok.from_config("tiny")
    with torch.no_grad():
        model.quantizer.embedding.weight.normal_(0, 0.5)
    return model


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory, tiny_model) -> Path:
    """The tiny model saved as a model file (this also gives it its hash-based model id)."""
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    tiny_model.save(path)
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_model, tiny_model_file) -> Path:
    """An fp32 bundle of the tiny model: treat as read-only (copy it to corrupt it)."""
    return export_bundle(tiny_model, tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(scope="session")
def official_tiny_bundle(tmp_path_factory, official_tiny_dir) -> Path:
    """A bundle of the official-tiny reference checkpoints (for the golden tokens and audio)."""
    from meltok import MelTok

    model = MelTok.from_official(official_tiny_dir / "stage1.pt", official_tiny_dir / "stage2.ckpt")
    return export_bundle(model, tmp_path_factory.mktemp("bundles") / "official-tiny")


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    """A private copy of the tiny bundle that a test may corrupt."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


@pytest.fixture(scope="session")
def codec(tiny_bundle):
    """One ort-cpu Codec on the tiny bundle, shared by the tests (it is thread-safe)."""
    from meltok_runtime import Codec

    with Codec.open(tiny_bundle, backend="ort-cpu") as opened:
        yield opened


@pytest.fixture(scope="session")
def small_window_codec(tiny_bundle):
    """A Codec with 2 s windows, so that requests of a few seconds take the windowed path too."""
    from meltok_runtime import Codec

    with Codec.open(tiny_bundle, backend="ort-cpu", threads=1, window_seconds=2.0, context_seconds=0.25) as opened:
        yield opened


@pytest.fixture(scope="session")
def long_music() -> np.ndarray:
    """Real music, mono float32 at 44.1 kHz: ``tests/data/long_music.ogg`` (40 s)."""
    from meltok_runtime.io.audio import load_audio, prepare_audio

    if not LONG_MUSIC.is_file():
        pytest.skip(f"{LONG_MUSIC} is missing")
    audio, rate = load_audio(LONG_MUSIC)
    return prepare_audio(audio[None], rate)[0][0]


from .corpus_fixtures import clips, encoded, local_dataset  # noqa: E402,F401 - token-dataset fixtures
