"""meltok_runtime: run exported MelTok bundles with numpy and ONNX Runtime (TensorRT optional), never torch.

``from meltok_runtime import Codec``; see ``meltok_runtime.codec``. Also the pure-numpy contracts
shared with ``meltok`` and ``meltok_export``: token files, audio I/O (``io``), length rules (``lengths``), bundle manifests.
Heavy modules (the codec, its backends, soundfile/soxr) are imported on first use.
"""
from importlib import metadata as _metadata

from meltok_runtime.errors import (AudioInputError, BackendError, BundleError, CodeRangeError, EngineMismatchError,
                     InputSpecError, MeltokError, ModelMismatchError, OutputPathError, SettingsError, TokenFileError,
                     TokenInputError)
from meltok_runtime.lazy import lazy_attributes

try:  # one source of truth for all three packages: the version in setup.cfg, as installed
    __version__ = _metadata.version("meltok")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {"Codec": "codec", "default_bundle": "codec", "load_manifest": "manifest", "Manifest": "manifest",
         "read_tokens": "io.tokenfile", "write_tokens": "io.tokenfile", "TokenFile": "io.tokenfile",
         "load_audio": "io.audio", "write_audio": "io.audio", "AudioCodec": "pipeline", "encode_file": "io.files",
         "decode_file": "io.files"}

__all__ = ["__version__", "AudioInputError", "BackendError", "BundleError", "CodeRangeError", "EngineMismatchError",
           "InputSpecError", "MeltokError", "ModelMismatchError", "OutputPathError", "SettingsError", "TokenFileError",
           "TokenInputError", *_LAZY]

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
