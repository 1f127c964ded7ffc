"""Errors of the export side; every one is a ``MeltokError`` (the CLI prints it as one line)."""
from meltok_runtime.errors import BundleError, MeltokError, OutputPathError


class ExportOptionError(MeltokError, ValueError):
    """Export options out of range (engine, precision, limits, flags that do not fit together)."""


class TritonOptionError(ExportOptionError):
    """Triton repository options that do not fit together or do not fit the bundle."""


class ContractError(BundleError):
    """An exported graph whose names, dtypes, shapes or dynamic axes differ from the export contract."""


class VerificationError(BundleError):
    """Exported graphs or engines that do not reproduce the PyTorch model within the tolerances."""


class ExportDestinationError(OutputPathError):
    """A bundle destination that would lose other files, or cannot be written."""


__all__ = ["ContractError", "ExportDestinationError", "ExportOptionError", "TritonOptionError", "VerificationError"]
