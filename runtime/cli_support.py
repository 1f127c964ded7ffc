"""Pieces shared by the ``meltok``, ``meltok-export`` and ``meltok-rt`` command lines."""
import functools
import logging
import sys

from pathlib import Path

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
