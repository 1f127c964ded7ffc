"""meltok_runtime: run exported MelTok bundles with numpy and ONNX Runtime (TensorRT optional), never torch.

``from meltok_runtime import Codec``; see ``meltok_runtime.codec``. Also the pure-numpy contracts
shared with ``meltok`` and ``meltok_export``: token files, audio I/O, framing, bundle manifests.
Heavy modules (the codec, its backends, soundfile/soxr) are imported on first use.
"""
from .errors import (AudioInputError, BackendError, BundleError, CodeRangeError, EngineMismatchError,
                     InputSpecError, MeltokError, ModelMismatchError, OutputPathError, SettingsError, TokenFileError,
                     TokenInputError)

_LAZY = {"Codec": "codec", "default_bundle": "codec", "load_manifest": "manifest", "Manifest": "manifest",
         "read_tokens": "tokenfile", "write_tokens": "tokenfile", "TokenFile": "tokenfile",
         "load_audio": "audio", "write_audio": "audio", "AudioCodec": "pipeline", "encode_file": "codec_files",
         "decode_file": "codec_files"}

__all__ = ["AudioInputError", "BackendError", "BundleError", "CodeRangeError", "EngineMismatchError",
           "InputSpecError", "MeltokError", "ModelMismatchError", "OutputPathError", "SettingsError", "TokenFileError",
           "TokenInputError", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
