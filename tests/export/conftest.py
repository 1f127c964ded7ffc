"""Export test fixtures: the tiny preset and the official-tiny model, exported once per session."""
import pytest
import torch

from meltok import MelTok


def _tiny() -> MelTok:
    torch.manual_seed(0)
    model = MelTok.from_config("tiny")
    with torch.no_grad():  # spread the codebook so that random latents pick many codes, without near-ties
        model.quantizer.embedding.weight.normal_(0, 0.5)
    return model


@pytest.fixture(scope="session")
def tiny_model() -> MelTok:
    """The ``tiny`` preset with random weights (seeded)."""
    return _tiny()


@pytest.fixture(scope="session")
def official_model(official_tiny_dir) -> MelTok:
    """The official-format fixture loaded from its two reference checkpoints."""
    return MelTok.from_official(official_tiny_dir / "stage1.pt", official_tiny_dir / "stage2.ckpt")


@pytest.fixture(scope="session")
def models(tiny_model, official_model) -> dict:
    return {"tiny": tiny_model, "official": official_model}


@pytest.fixture(scope="session")
def exported(tmp_path_factory, models):
    """``exported(model_name, precision)`` -> folder holding that model's encoder.onnx/decoder.onnx and an
    unverified manifest (cached)."""
    from meltok_export.bundle import draft_manifest
    from meltok_export.onnx_export import export_onnx

    folders = {}

    def get(name: str, precision: str):
        if (name, precision) not in folders:
            folder = tmp_path_factory.mktemp(f"{name}-{precision}")
            graphs = export_onnx(models[name], folder, precision=precision)
            draft_manifest(models[name], graphs, folder=folder).write(folder)
            folders[name, precision] = folder
        return folders[name, precision]

    return get


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory, tiny_model):
    """The tiny model saved as a model file (sets its model id)."""
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    tiny_model.save(path)
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_model, tiny_model_file):
    """An fp32 ONNX bundle of the tiny model, written by export_bundle (verification on 2 s of audio)."""
    from meltok_export.bundle import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    manifest = export_bundle(tiny_model, out, verify_seconds=2.0, max_seconds=12.0, opt_seconds=4.0, max_batch=4)
    return out, manifest
