"""Reliability battery (issue 6): writers killed midway, the CLI input matrix, untrusted files.

Without a ``conftest.py`` here, the modules share the tiny model's files through
``tiny_assets``: built once per session (cached by the session's base temp folder), whichever
module asks first.
"""
import dataclasses
import functools
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class TinyAssets:
    """The seeded ``tiny`` preset saved as a model file and exported as a bundle (treat as read-only)."""

    model_file: Path
    bundle: Path
    model_id: str
    codebook_size: int
    token_rows: int


def tiny_assets(tmp_path_factory) -> TinyAssets:
    """Build (once per session) or return the tiny model file and its bundle."""
    return _build(str(tmp_path_factory.getbasetemp()))


@functools.lru_cache(maxsize=None)
def _build(base: str) -> TinyAssets:
    import torch

    from meltok import MelTok
    from meltok_export.bundle import export_bundle

    folder = Path(base) / "reliability-tiny"
    folder.mkdir()
    torch.manual_seed(0)
    model = MelTok.from_config("tiny")
    with torch.no_grad():  # spread the codebook as the other suites do: no near-ties between torch and ONNX
        model.quantizer.embedding.weight.normal_(0, 0.5)
    model_id = model.save(folder / "tiny.safetensors")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine two spinning OpenMP threads are far slower than one
    try:
        export_bundle(model, folder / "bundle", verify_seconds=1.0)
    finally:
        torch.set_num_threads(threads)
    return TinyAssets(model_file=folder / "tiny.safetensors", bundle=folder / "bundle", model_id=model_id,
                      codebook_size=model.codebook_size, token_rows=model.token_rows)
