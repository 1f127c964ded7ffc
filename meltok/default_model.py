"""Where the shipped default model lives."""
from pathlib import Path

from meltok_runtime.errors import ModelFileError

DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default.safetensors"


def default_model_path() -> Path:
    """Path of the shipped default model file; a clear error when this install has none."""
    if not DEFAULT_MODEL.is_file():
        raise ModelFileError(f"no default model is installed at {DEFAULT_MODEL}; pass a model file with -m "
                             "(e.g. from `meltok convert` or `meltok train`)")
    return DEFAULT_MODEL
