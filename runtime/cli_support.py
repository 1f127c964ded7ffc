"""Pieces shared by the ``meltok``, ``meltok-export`` and ``meltok-rt`` command lines."""
import contextlib
import functools
import logging
import sys

import click

from .errors import MeltokError

log = logging.getLogger("meltok_runtime")


def user_errors(command):
    """Turn a MeltokError (or a missing input file) into one line on stderr and exit code 1.

    Unexpected exceptions keep their traceback: they are bugs, not user errors.
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except MeltokError as error:
            raise click.ClickException(str(error)) from None
        except KeyboardInterrupt:
            click.echo("interrupted; no output was written", err=True)
            sys.exit(130)

    return wrapper


def setup_logging(verbose: bool) -> None:
    """Warnings (resampling, fallbacks) on stderr; ``-v`` adds progress details."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s",
                        stream=sys.stderr)


verbose_option = click.option("-v", "--verbose", is_flag=True, help="Log progress details on stderr.")


force_option = click.option("-y", "--force", is_flag=True,
                            help="Replace an existing output file (never an input file).")
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
