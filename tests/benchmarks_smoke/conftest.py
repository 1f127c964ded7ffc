"""The runtime suite's tiny bundle and real audio, for the GPU check's smoke test."""
from ..runtime.conftest import bundle_copy, long_music, tiny_bundle, tiny_model, tiny_model_file  # noqa: F401
