"""Atomic output files: write to a temporary sibling, then rename."""
import contextlib
import ctypes
import errno
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


def check_writable_folder(folder) -> None:
    """Raise OutputPathError unless a file can be created in ``folder`` (tried, so that read-only
    mounts and permissions are both caught before any work)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OutputPathError(f"cannot write to folder {str(folder)!r} ({error.strerror}); choose a writable "
                              "output path") from None


def _overlaps(path: Path, source: Path) -> bool:
    """True when ``path`` is ``source``, lies inside it or holds it (symbolic links resolved)."""
    path, source = path.resolve(), source.resolve()
    return path == source or source in path.parents or path in source.parents


def check_new_output(path, *, inputs=(), force: bool = False, folder: bool = False) -> Path:
    """Check an output path before any work, so that no user file is lost: it is none of ``inputs``
    (nor inside or around one), an existing one is replaced only with ``force`` (an existing folder:
    only when empty), and its folder is writable. Returns ``path`` as a Path."""
    path = Path(path)
    if not folder:
        check_output_path(path)
    elif path.exists() and not path.is_dir():
        raise OutputPathError(f"output path {str(path)!r} is a file; give a folder name")
    for source in map(Path, inputs):
        if source.exists() and _overlaps(path, source):
            relation = "is" if path.resolve() == source.resolve() else "overlaps (inside or around)"
            raise OutputPathError(f"output {str(path)!r} {relation} the input {str(source)!r}; writing it could "
                                  "destroy the input: choose another output path")
    if path.exists() and not force and (not folder or any(path.iterdir())):
        raise OutputPathError(f"{str(path)!r} already exists{' and is not empty' if folder else ''}; pass --force "
                              "to replace it, or choose another output path")
    parent = path.parent if str(path.parent) else Path(".")
    if folder and not path.exists() and not parent.is_dir():
        raise OutputPathError(
            f"output folder {str(parent)!r} does not exist; create it first or choose another path")
    check_writable_folder(path if path.is_dir() else parent)
    return path


def _default_file_mode(base: int = 0o666) -> int:
    """The mode a plain ``open`` (``base=0o777``: ``mkdir``) would give (mkstemp gives 0600, mkdtemp 0700)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return base & ~umask


def _exchange(new: Path, old: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(new), at_fdcwd, os.fsencode(old), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(old))


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

    An existing ``path`` is replaced only after the new folder is complete, by swapping the two in
    one step where the system can (Linux), so that ``path`` is never missing.
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
        os.chmod(tmp, _default_file_mode(0o777))
        if path.exists() and _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # it now holds the old folder
        elif path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
