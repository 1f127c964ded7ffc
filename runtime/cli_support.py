"""Pieces shared by the ``meltok``, ``meltok-export`` and ``meltok-rt`` command lines."""
import functools
import logging
import sys

from pathlib import Path

import click

from .errors import AudioInputError, MeltokError, TokenInputError
from .pcm_stream import INPUT_FORMATS, OUTPUT_FORMATS
from .streaming import DEFAULT_LOOKAHEAD_SECONDS

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


# ----------------------------------------------------------------------------- streaming
def _options(*options):
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
    click.option("--stream", is_flag=True, help="Decode as a stream and write the audio as it is decoded."),
    click.option("--format", "stream_format", type=click.Choice(OUTPUT_FORMATS), default="wav", show_default=True,
                 help="With --stream to standard output: 16-bit WAV with an open-ended header, or raw PCM."),
    click.option("--push-columns", type=click.IntRange(min=1), default=4, show_default=True,
                 help="With --stream: token columns pushed at a time."),
    _lookahead_option)

decoded_output_option = click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False, allow_dash=True),
    help="Audio file to write; the format follows the suffix (.wav, .flac, .ogg). With --stream, - is standard "
         "output.")


def check_stream_output(output, stream: bool) -> None:
    """``-o -`` only with ``--stream``; a file output must be writable."""
    from .atomic import check_output_path

    if output == "-" and not stream:
        raise click.UsageError("-o - (standard output) needs --stream")
    if output != "-":
        check_output_path(output)


def encode_stdin(codec, input_format: str, rate: int, channels: int, lookahead: float):
    """Tokens ``[1, rows, T']`` and the sample count of raw PCM streamed from standard input through
    ``codec.stream_encoder``; progress on stderr."""
    from .pcm_stream import encode_blocks, read_pcm_blocks

    if rate != codec.sample_rate:
        raise AudioInputError(f"standard input at {rate} Hz, but this model takes {codec.sample_rate} Hz; resample "
                              f"before the pipe (e.g. sox ... -r {codec.sample_rate}) and pass --rate")
    blocks = read_pcm_blocks(click.get_binary_stream("stdin"), input_format, channels)
    report = lambda samples: click.echo(f"\rencoded {samples / rate:.1f} s", err=True, nl=False)  # noqa: E731
    tokens, samples = encode_blocks(codec.stream_encoder(lookahead_seconds=lookahead), blocks, report, rate)
    click.echo("", err=True)
    return tokens[None], samples


def decode_stream(codec, token_file, output, stream_format: str, push_columns: int, lookahead: float):
    """Stream-decode a token file's single item through ``codec.stream_decoder``: to standard output as
    it is decoded (returns None), or collected for a file (returns audio ``[1, N]``)."""
    import io

    import numpy as np

    from .pcm_stream import PcmWriter, decode_columns

    if token_file.tokens.shape[0] != 1:
        raise TokenInputError(f"--stream decodes one item; {token_file.tokens.shape[0]} are in this file: "
                              "decode without --stream")
    columns, to_stdout, buffer = token_file.tokens.shape[-1], output == "-", io.BytesIO()
    writer = (PcmWriter(click.get_binary_stream("stdout"), stream_format, codec.sample_rate) if to_stdout
              else PcmWriter(buffer, "f32le", codec.sample_rate))
    report = lambda done: click.echo(f"\rdecoded {done}/{columns} columns", err=True, nl=False)  # noqa: E731
    decode_columns(codec.stream_decoder(lookahead_seconds=lookahead), token_file.tokens[0], writer,
                   token_file.num_samples[0], push_columns, report)
    click.echo("", err=True)
    return None if to_stdout else np.frombuffer(buffer.getvalue(), dtype="<f4")[None]
