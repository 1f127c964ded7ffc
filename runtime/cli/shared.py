"""Pieces shared by the ``meltok``, ``meltok-export`` and ``meltok-rt`` command lines."""
import contextlib
import functools
import importlib.util
import logging
import sys

import click

from meltok_runtime import __version__
from meltok_runtime.errors import MeltokError
from meltok_runtime.io.pcm import INPUT_FORMATS, OUTPUT_FORMATS
from meltok_runtime.stream import DEFAULT_LOOKAHEAD_SECONDS

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


original_rate_option = click.option(
    "--original-rate", is_flag=True,
    help="Write at the sample rate and length the audio had before encoding (recorded in the token file); "
         "default: the model's rate.")
subtype_option = click.option("--subtype", type=click.Choice(["PCM_16", "PCM_24", "FLOAT"]), default=None,
                              help="Sample format of the audio file (default: FLOAT for .wav, PCM_24 for .flac).")


@contextlib.contextmanager
def progress_bar(label: str):
    """Yield a ``progress(done, total)`` callback that draws a bar on stderr once a job has more than
    one step (the pipeline's own window count drives it)."""
    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            if total <= 1:
                return
            bar = click.progressbar(length=total, label=label, file=sys.stderr)
            bar.__enter__()
        bar.update(done - bar.pos)

    try:
        yield update
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


def report_rate(rate: int, model_rate: int, recorded: int | None) -> None:
    """Say on stderr at which sample rate decoded audio is written, and how to get the other."""
    if rate != model_rate:
        note = "the rate of the audio before encoding"
    elif recorded not in (None, model_rate):
        note = f"the model's rate; --original-rate restores {recorded} Hz"
    else:
        note = "the model's rate"
    click.echo(f"writing {rate} Hz audio ({note})", err=True)


# ----------------------------------------------------------------------------- streaming
def _options(*options):
    """One decorator applying ``options`` in order."""
    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command

    return apply


_lookahead_option = click.option(
    "--lookahead", type=click.FloatRange(min=0), default=DEFAULT_LOOKAHEAD_SECONDS, show_default=True,
    help="Streaming lookahead in seconds (time-local models get at least what exactness needs).")

stdin_options = _options(
    click.option("--input-format", type=click.Choice(sorted(INPUT_FORMATS)), default="s16le", show_default=True,
                 help="Raw PCM format of standard input (AUDIO = -)."),
    click.option("--rate", type=click.IntRange(min=1), default=44100, show_default=True,
                 help="Sample rate of standard input; must be the model's."),
    click.option("--channels", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Interleaved channels of standard input (mixed down)."),
    _lookahead_option)

stream_options = _options(
    click.option("--stream", is_flag=True, help="Decode as a stream to standard output (-o -), as it is decoded."),
    click.option("--format", "stream_format", type=click.Choice(OUTPUT_FORMATS), default="wav", show_default=True,
                 help="With --stream: 16-bit WAV with an open-ended header, or raw PCM."),
    click.option("--push-columns", type=click.IntRange(min=1), default=4, show_default=True,
                 help="With --stream: token columns pushed at a time."),
    _lookahead_option)


decoded_output_option = click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False, allow_dash=True),
    help="Audio file to write; the format follows the suffix (.wav, .flac, .ogg); - with --stream: standard output.")


def check_stream_output(output, stream: bool) -> None:
    """``-o -`` goes with ``--stream`` and ``--stream`` with ``-o -``."""
    if (output == "-") != stream:
        raise click.UsageError("--stream writes to standard output: pass both --stream and -o - (or neither, to "
                               "write a file)")


def encode_source(codec, audio, output, *, force: bool, progress, input_format: str, rate: int, channels: int,
                  lookahead: float):
    """``encode AUDIO``: an audio file through ``codec_files.encode_file``, or for ``-`` raw PCM from
    standard input through a stream, progress on stderr; returns the TokenFile written."""
    from meltok_runtime.io.files import encode_file
    from meltok_runtime.stream.files import encode_pcm_stream

    if audio != "-":
        return encode_file(codec, audio, output, force=force, progress=progress)
    written = encode_pcm_stream(
        codec, click.get_binary_stream("stdin"), output, input_format=input_format, rate=rate, channels=channels,
        lookahead_seconds=lookahead, force=force,
        progress=lambda seconds: click.echo(f"\rencoded {seconds:.0f} s", err=True, nl=False))
    click.echo("", err=True)
    return written


def decode_source(codec, tokens, output, *, original_rate: bool, force: bool, subtype, progress, stream: bool,
                  stream_format: str, push_columns: int, lookahead: float):
    """``decode TOKENS -o OUT``: a file through ``codec_files.decode_file`` (returns what it wrote), or with
    ``--stream`` audio on standard output as it is decoded, progress and a closing line on stderr (None).
    The rate written is reported on stderr."""
    from meltok_runtime.io.files import decode_file
    from meltok_runtime.stream.files import decode_to_stream

    if not stream:
        written = decode_file(codec, tokens, output, original_rate=original_rate, force=force, subtype=subtype,
                              progress=progress)
        report_rate(written.sample_rate, codec.sample_rate, written.recorded_rate)
        return written
    written = decode_to_stream(
        codec, tokens, click.get_binary_stream("stdout"), output_format=stream_format, push_columns=push_columns,
        lookahead_seconds=lookahead,
        progress=lambda done, total: click.echo(f"\rdecoded {done}/{total} columns", err=True, nl=False))
    click.echo(f"\nwrote - ({written.num_samples[0] / codec.sample_rate:.2f} s at {codec.sample_rate} Hz)", err=True)
    return None
