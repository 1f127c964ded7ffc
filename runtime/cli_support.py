"""Pieces shared by the ``meltok``, ``meltok-export`` and ``meltok-rt`` command lines."""
import functools
import logging
import sys

import click

from .errors import MeltokError


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
