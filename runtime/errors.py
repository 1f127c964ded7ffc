"""Typed errors shared by every meltok package.

Each message says what was received, what was expected and what to do.
The CLIs turn any ``MeltokError`` into one line on stderr and a non-zero exit.
"""


class MeltokError(Exception):
    """Base class of every error meltok raises on purpose."""


class AudioInputError(MeltokError, ValueError):
    """Audio that cannot be encoded: unreadable, empty, NaN/Inf, wrong shape."""


class TokenFileError(MeltokError, ValueError):
    """A token file that cannot be read or written."""


class BadMagicError(TokenFileError):
    """The file does not start with the token-file magic bytes."""


class UnsupportedVersionError(TokenFileError):
    """The token file was written by a newer (or unknown) format version."""


class TruncatedError(TokenFileError):
    """The token file ends before its header or packed codes do."""


class CodeRangeError(TokenFileError):
    """A token lies outside ``[0, codebook_size)``."""


class ModelMismatchError(MeltokError, ValueError):
    """Tokens, bundle or engine made for another model, GPU or library version."""


class ModelFileError(MeltokError, ValueError):
    """A model file or checkpoint that is missing, corrupt or incompatible."""


class BundleError(MeltokError, ValueError):
    """An export bundle whose manifest or graphs are missing or corrupt."""


class EngineVerificationError(BundleError):
    """TensorRT engines built here do not reproduce ONNX Runtime CPU's outputs on the bundle's clip."""


class BackendError(MeltokError, RuntimeError):
    """A named backend that cannot run here (library or device missing)."""


class OutputPathError(MeltokError, ValueError):
    """An output path that cannot be written (missing folder, a directory)."""


class TokenInputError(MeltokError, ValueError):
    """A token array of the wrong type or shape for this model."""


class SettingsError(MeltokError, ValueError):
    """A setting out of its valid range for this model (window or context length, subtype, ...)."""


class InputSpecError(MeltokError, ValueError):
    """Feeds for a graph with missing or unexpected names, or the wrong dtype or rank."""


class EngineMismatchError(ModelMismatchError, BackendError):
    """A TensorRT engine built for another GPU, TensorRT version or ONNX graph: refused, never run."""


class MissingDependencyError(BackendError, ImportError):
    """An optional package needed for this feature is not installed; the message names the install command."""


class MetricUnavailable(MeltokError, RuntimeError):
    """An optional metric whose package (or model file) is missing here; the message says why."""


class StreamClosedError(MeltokError, RuntimeError):
    """A stream used after ``flush()`` closed it."""


class SourceError(MeltokError, ValueError):
    """A source list of a tokenize job that cannot be turned into items: missing paths, bad manifests,
    duplicate ids."""


class DatasetError(MeltokError, ValueError):
    """A dataset folder that cannot be read or extended (missing, corrupt, another model's)."""


class ItemError(MeltokError, ValueError):
    """One item's own data cannot be tokenized (unreadable, empty, NaN, too short); ``str(error)`` is the
    one-line reason a job records for that item before going on."""


class WorkerError(MeltokError, RuntimeError):
    """A fault of the job, not of an item (a backend error, out of memory, a dead worker): the job stops,
    records nothing for the items in flight, and the same command resumes it."""


class ClusterError(MeltokError, RuntimeError):
    """Ray could not be started or reached at the given address, or its nodes cannot hold the actors asked for."""
