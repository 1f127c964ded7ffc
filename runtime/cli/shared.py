"""Pieces shared by the ``meltok``, ``meltok-export`` and ``meltok-rt`` command lines."""
import contextlib
import functools
import importlib.util
import logging
import os
import signal
import sys
import time

import click

from meltok_runtime import __version__
from meltok_runtime.errors import MeltokError
from meltok_runtime.io.pcm import INPUT_FORMATS, OUTPUT_FORMATS
from meltok_runtime.stream import DEFAULT_LOOKAHEAD_SECONDS

PROGRESS_LOG_SECONDS = 5.0  # outside a terminal: a progress line this often

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
def progress_bar(label: str, *, terminal: bool | None = None, interval: float = PROGRESS_LOG_SECONDS):
    """Yield ``progress(done, total, note=None)``, the one progress display of every command (``total``
    None: open-ended, e.g. a live input). On a terminal: a bar on stderr once a job has more than one
    step (open-ended: one line redrawn); elsewhere (a log file, a pipe): a line on stderr every
    ``interval`` seconds and one at the end, never carriage returns."""
    terminal = sys.stderr.isatty() if terminal is None else terminal
    state = {"bar": None, "last": time.monotonic(), "line": None, "drawn": False}

    def update(done: int, total: int | None, note: str | None = None) -> None:
        if total is not None and total <= 1:
            return
        line = f"{label}: " + (f"{done}/{total}" if total is not None else "") + (
            (" " if total is not None else "") + f"({note})" if note else "")
        if not terminal:
            state["line"] = line
            now = time.monotonic()
            if now - state["last"] >= interval:
                click.echo(line, err=True)
                state["last"], state["line"] = now, None
            return
        if total is None:
            click.echo(f"\r{line}", err=True, nl=False)
            state["drawn"] = True
            return
        if state["bar"] is None:
            state["bar"] = click.progressbar(length=total, label=label, file=sys.stderr, show_eta=True,
                                             item_show_func=lambda shown: shown)
            state["bar"].__enter__()
        state["bar"].update(done - state["bar"].pos, note)

    try:
        yield update
    finally:
        if state["bar"] is not None:
            state["bar"].__exit__(None, None, None)
        elif state["drawn"]:
            click.echo("", err=True)
        elif state["line"] is not None:
            click.echo(state["line"], err=True)


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



# ----------------------------------------------------------------------------- TensorRT engines
# The build settings of `meltok-export --engine trt` and `meltok-rt engines` (one builder, one vocabulary).
engine_build_options = _options(
    click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="Longest input per call the engines accept [default: one runtime window, about 12 s]."),
    click.option("--opt-seconds", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="Input length the engines are tuned for [default: one runtime window]."),
    click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
                 help="Largest batch the engines accept."),
    click.option("--version-compatible", is_flag=True,
                 help="TensorRT engines that also run on later TensorRT 10.x/11.x releases and on the lean runtime "
                      "(`pip install -e '.[trt]'`), at some speed cost."),
    click.option("--stream-profile", is_flag=True,
                 help="A second optimisation profile tuned for stream-sized calls (about 1 s)."),
    click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
                 help="TensorRT timing cache to read and update [default: ~/.cache/meltok/tensorrt-timing.cache]."))

_lookahead_option = click.option(
    "--lookahead", type=click.FloatRange(min=0), default=None,
    help=f"Streaming lookahead in seconds (default {DEFAULT_LOOKAHEAD_SECONDS}; time-local models get at least what "
         "exactness needs).")

stdin_options = _options(
    click.option("--input-format", type=click.Choice(sorted(INPUT_FORMATS)), default="s16le", show_default=True,
                 help="Sample format of raw PCM on standard input (AUDIO = -); a WAV is recognised by its header."),
    click.option("--rate", type=click.IntRange(min=1), default=44100, show_default=True,
                 help="Sample rate of raw PCM on standard input (resampled to the model's as files are)."),
    click.option("--channels", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Interleaved channels of raw PCM on standard input (mixed down)."),
    click.option("--live", is_flag=True,
                 help="Encode standard input as it arrives (a stream: tokens differ from a file's for models that "
                      "are not time-local; the token file records it). Default: read it to its end first."),
    _lookahead_option)

stream_options = _options(
    click.option("--stream", is_flag=True, help="Decode as a stream to standard output (-o -), as it is decoded."),
    click.option("--stream-format", type=click.Choice(OUTPUT_FORMATS), default="wav", show_default=True,
                 help="With --stream: 16-bit WAV with an open-ended header, or raw PCM (s16le, f32le)."),
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
                  live: bool, lookahead: float | None):
    """``encode AUDIO``: an audio file, or for ``-`` standard input (a WAV or raw PCM) read to its end and
    encoded as a file is, or with ``--live`` encoded by a stream as it arrives; returns the TokenFile written."""
    from meltok_runtime.io.files import encode_file
    from meltok_runtime.io.pcm import raw_layout
    from meltok_runtime.stream.files import encode_live, encode_stdin

    if audio != "-":
        if live:
            raise click.UsageError("--live encodes standard input as it arrives: pass AUDIO as - (a file is read "
                                   "whole)")
        if lookahead is not None:
            raise click.UsageError("--lookahead applies to --live (a stream); drop it")
        return encode_file(codec, audio, output, force=force, progress=progress)
    layout = raw_layout(input_format, rate, channels)
    source = click.get_binary_stream("stdin")
    if not live:
        if lookahead is not None:
            raise click.UsageError("--lookahead applies to --live (a stream); drop it, or add --live")
        return encode_stdin(codec, source, output, layout=layout, force=force, progress=progress)
    lookahead = DEFAULT_LOOKAHEAD_SECONDS if lookahead is None else lookahead
    return encode_live(codec, source, output, layout=layout, lookahead_seconds=lookahead, force=force,
                       progress=lambda seconds: progress(int(seconds), None, f"{seconds:.0f} s encoded"))


def decode_source(codec, tokens, output, *, original_rate: bool, force: bool, subtype, progress, stream: bool,
                  stream_format: str, push_columns: int, lookahead: float | None):
    """``decode TOKENS -o OUT``: a file through ``io.files.decode_file`` (returns what it wrote), or with
    ``--stream`` audio on standard output as it is decoded, progress and a closing line on stderr (None).
    The rate written is reported on stderr."""
    from meltok_runtime.io.files import decode_file
    from meltok_runtime.stream.files import decode_to_stream

    if not stream:
        if lookahead is not None:
            raise click.UsageError("--lookahead applies to --stream; drop it")
        written = decode_file(codec, tokens, output, original_rate=original_rate, force=force, subtype=subtype,
                              progress=progress)
        report_rate(written.sample_rate, codec.sample_rate, written.recorded_rate)
        return written
    if subtype is not None:
        raise click.UsageError("--subtype sets the sample format of files; with --stream choose --stream-format "
                               "(wav: 16-bit, s16le or f32le)")
    if force:
        raise click.UsageError("-y/--force replaces files; --stream writes to standard output, where there is "
                               "nothing to replace: drop it")
    lookahead = DEFAULT_LOOKAHEAD_SECONDS if lookahead is None else lookahead
    try:
        token_file, rate = decode_to_stream(
            codec, tokens, click.get_binary_stream("stdout"), output_format=stream_format, push_columns=push_columns,
            lookahead_seconds=lookahead, original_rate=original_rate, progress=progress)
    except BrokenPipeError:
        # the reader left (``| head``): stop quietly, as Unix tools do when SIGPIPE ends them
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE)
    report_rate(rate, codec.sample_rate, token_file.source_sample_rate)
    click.echo(f"wrote - ({token_file.num_samples[0] / codec.sample_rate:.2f} s at {rate} Hz)", err=True)
    return None
