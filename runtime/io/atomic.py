"""Output files: never over an input, never a surprise replacement, and written atomically
(a temporary sibling, then a rename, then an fsync of the folder so that the rename itself
survives a power cut: a file once renamed into place cannot vanish).

Temporaries are created with the modes a plain ``open`` (0666) or ``mkdir`` (0777) gives, less the
umask, which the kernel applies; the process-wide umask is never read or changed (that would race
with other threads creating files).
"""
import contextlib
import ctypes
import errno
import logging
import os
import secrets
import shutil
from pathlib import Path

from meltok_runtime.errors import OutputPathError

# Room kept free on an output's file system beyond the output itself, so a full disk is refused up front.
MIN_FREE_BYTES = 1 << 20

log = logging.getLogger("meltok_runtime")


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


def check_new_output(path, *, inputs=(), force: bool = False, suffixes=(), what: str = "output",
                     needed_bytes: int = 0) -> Path:
    """Check an output before any work: refuse ``path`` when it is one of ``inputs`` (the same file,
    by ``os.path.samefile``) or exists and ``force`` is false; warn on stderr when its suffix is not
    one of ``suffixes`` (what is written there); check that its folder can be written and has room
    for ``needed_bytes``."""
    path = check_output_path(path)
    if path.exists():
        for source in inputs:
            if Path(source).exists() and os.path.samefile(path, source):
                raise OutputPathError(f"the {what} {str(path)!r} is the input file; writing it would destroy the "
                                      "input: choose another output name")
        if not force:
            raise OutputPathError(f"the {what} {str(path)!r} exists; pass --force (-y) to replace it, or choose "
                                  "another name")
    if suffixes and path.suffix.lower() not in suffixes:
        log.warning("%s is written as a %s but its suffix %r suggests otherwise (expected %s)", path, what,
                    path.suffix, " or ".join(suffixes))
    check_writable_folder(path.parent if str(path.parent) else Path("."), needed_bytes)
    return path


def check_new_folder(path, *, inputs=(), force: bool = False) -> Path:
    """Check an output folder before any work: it is none of the ``inputs`` (files or folders) and
    lies neither inside nor around one; an existing, non-empty one is written into only with
    ``force``; it (or the folder that will hold it) can be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"output path {str(path)!r} is a file; give a folder name")
    for source in map(Path, inputs):
        if not source.exists():
            continue
        inner, outer = path.resolve(), source.resolve()
        if inner == outer or outer in inner.parents or inner in outer.parents:
            relation = "is" if inner == outer else "lies inside or around"
            raise OutputPathError(f"the output folder {str(path)!r} {relation} the input {str(source)!r}; writing "
                                  "there could destroy the input: choose another folder")
    if path.is_dir() and not force and any(path.iterdir()):
        raise OutputPathError(f"the output folder {str(path)!r} exists and is not empty; pass --force (-y) to "
                              "write into it, or choose another folder")
    parent = path.parent if str(path.parent) else Path(".")
    if not path.exists() and not parent.is_dir():
        raise OutputPathError(
            f"output folder {str(parent)!r} does not exist; create it first or choose another path")
    check_writable_folder(path if path.is_dir() else parent)
    return path


def check_writable_folder(folder: Path, needed_bytes: int = 0) -> None:
    """Raise OutputPathError unless a file can be created in ``folder`` (tried, so that read-only
    mounts and permissions are both caught before any work) and its file system has room for
    ``needed_bytes`` plus ``MIN_FREE_BYTES`` (a full disk is caught before the work, not after)."""
    try:
        probe = _create_temporary(folder, ".meltok-write-check.", ".probe")
    except OSError as error:
        raise OutputPathError(f"cannot write into the folder {str(folder)!r} ({error.strerror}); choose a writable "
                              "folder") from None
    probe.unlink()
    free = shutil.disk_usage(folder).free
    if free < needed_bytes + MIN_FREE_BYTES:
        raise OutputPathError(f"the folder {str(folder)!r} has {free / 1e6:.1f} MB free and this output needs about "
                              f"{(needed_bytes + MIN_FREE_BYTES) / 1e6:.1f} MB; free some space or choose another "
                              "folder")


def _create_temporary(parent: Path, prefix: str, suffix: str, *, directory: bool = False) -> Path:
    """A new, uniquely named empty file (mode 0666 less the umask) or folder (0777 less the umask)."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            if directory:
                os.mkdir(path, 0o777)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent))


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


def fsync_directory(folder) -> None:
    """Make the entries of ``folder`` (a rename or a new file in it) durable: fsync the folder itself.

    A rename is only a change of the folder; until the folder is flushed, a power cut can undo it.
    File systems that cannot fsync a folder (some network mounts) are left as they are.
    """
    try:
        handle = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(handle)


@contextlib.contextmanager
def atomic_output(path, suffix: str = ""):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    An exception (or a killed process) leaves the old file, if any, untouched and
    removes the temporary file.
    """
    path = check_output_path(path)
    parent = path.parent if str(path.parent) else Path(".")
    tmp = _create_temporary(parent, f".{path.name}.", f".tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
        fsync_directory(parent)
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
    tmp = _create_temporary(parent, f".{path.name}.", ".tmp", directory=True)
    try:
        yield tmp
        if path.exists() and _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # it now holds the old folder
        elif path.exists():
            old = _create_temporary(parent, f".{path.name}.", ".old", directory=True)
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_directory(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
