"""Atomic output files: write to a temporary sibling, then rename."""
import contextlib
import os
import tempfile
from pathlib import Path

from .errors import OutputPathError


def check_output_path(path) -> Path:
    """Return ``path`` as a Path, or raise OutputPathError if it cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"output path {str(path)!r} is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(
            f"output folder {str(parent)!r} does not exist; create it first or choose another path")
    return path


def _default_file_mode() -> int:
    """The mode a plain ``open`` would give a new file (mkstemp gives 0600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_output(path, suffix: str = ""):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    An exception (or a killed process) leaves the old file, if any, untouched and
    removes the temporary file.
    """
    path = check_output_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent or ".")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path):
    """Yield a temporary folder beside ``path``; rename it onto ``path`` only on success.

    An existing ``path`` is replaced only after the new folder is complete.
    """
    import shutil

    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(
            f"output folder {str(parent)!r} does not exist; create it first or choose another path")
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"output path {str(path)!r} is a file; give a folder name")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
