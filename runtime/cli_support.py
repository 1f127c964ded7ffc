"""Pieces shared by the ``meltok``, ``meltok-export`` and ``meltok-rt`` command lines."""
import functools
import importlib.util
import logging
import sys

from pathlib import Path

import click

from . import __version__
from .errors import MeltokError

log = logging.getLogger("meltok_runtime")

# Packages outside the base (runtime-only) install, and the extra of setup.cfg that brings each.
EXTRA_OF_PACKAGE = {"torch": "train", "safetensors": "train", "matplotlib": "train",
                    "onnx": "export", "onnxsim": "export", "polygraphy": "export"}


def missing_package_message(package: str, extra: str) -> str:
    """One line naming the missing ``package`` and the install command of ``extra``."""
    return (f"this command needs the Python package {package!r}, which is not installed (the runtime-only "
            f"install runs only meltok-rt): pip install -e '.[{extra}]' in the meltok folder; for a CPU-only "
            "PyTorch see the README's Install section")


def require_packages(packages, extra: str) -> None:
    """Stop with one line naming ``extra`` when one of ``packages`` is not installed (checked without
    importing it)."""
    for package in packages:
        if importlib.util.find_spec(package) is None:
            raise click.ClickException(missing_package_message(package, extra))


def user_errors(command):
    """Turn a MeltokError, or an optional package missing from the install, into one line on stderr
    and exit code 1.

    Unexpected exceptions keep their traceback: they are bugs, not user errors.
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except MeltokError as error:
            raise click.ClickException(str(error)) from None
        except ModuleNotFoundError as error:
            package = (error.name or "").split(".")[0]
            if package not in EXTRA_OF_PACKAGE:
                raise
            raise click.ClickException(missing_package_message(package, EXTRA_OF_PACKAGE[package])) from None
        except KeyboardInterrupt:
            click.echo("interrupted; no output was written", err=True)
            sys.exit(130)

    return wrapper


class CommandGroup(click.Group):
    """A click group whose usage errors (a missing or unknown option, a folder where a file is
    expected) print one line, ``Error: ...; see 'PROG CMD --help'``, with click's exit code 2."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as error:
            raise _one_line(error) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as error:  # raised while parsing a subcommand's arguments
            raise _one_line(error) from None


def _one_line(error: click.UsageError) -> click.ClickException:
    if isinstance(error, click.exceptions.NoArgsIsHelpError):
        return error  # a command given without arguments shows its help
    where = f"; see '{error.ctx.command_path} --help'" if error.ctx is not None else ""
    short = click.ClickException(" ".join(error.format_message().split()).rstrip(".") + where)
    short.exit_code = error.exit_code
    return short


def setup_logging(verbose: bool) -> None:
    """Warnings (resampling, fallbacks) on stderr; ``-v`` adds progress details."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s",
                        stream=sys.stderr)


verbose_option = click.option("-v", "--verbose", is_flag=True, help="Log progress details on stderr.")
force_option = click.option("-y", "--force", is_flag=True,
                            help="Replace an existing output file (never an input file).")


def version_option(command):
    """``--version``: ``PROG VERSION`` (a new click option per command: click caches the program name in it)."""
    return click.version_option(__version__, message="%(prog)s %(version)s")(command)


def load_for_encoding(path, sample_rate: int):
    """An audio file as float32 ``[1, N]`` at ``sample_rate``: checked first, then resampled with a
    warning on stderr (so a bad file gives one error line, not a warning and an error)."""
    from .audio import load_audio, prepare_audio  # soundfile and soxr only when a command needs them

    samples, rate = load_audio(path)
    batch, resampled = prepare_audio(samples[None], rate, sample_rate)
    if resampled:
        log.warning("resampling %s from %d Hz to %d Hz", path, rate, sample_rate)
    return batch


def write_decoded(output, audio, num_samples: list, sample_rate: int) -> None:
    """Write item ``i`` of ``audio [B, N]`` trimmed to ``num_samples[i]``; with several items the
    files are named ``OUT-0.wav``, ``OUT-1.wav``, ..."""
    from .audio import write_audio

    output = Path(output)
    for index, length in enumerate(num_samples):
        target = output if len(num_samples) == 1 else output.with_name(f"{output.stem}-{index}{output.suffix}")
        write_audio(target, audio[index, :length], sample_rate)
