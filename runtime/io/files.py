"""Audio file <-> token file through any codec: the file pipeline of ``meltok`` and ``meltok-rt``.

``encode_file``: check the output (never over the input, no silent replacement, a writable
folder), read the audio, prepare it once (``CodecPipeline.prepare``: channels mixed down,
resampled, both said on stderr), encode, write the token file with the model's and the original
rate and length. ``decode_file`` is the reverse, at the model's rate or, with ``original_rate``, at
the rate and length the audio had before encoding. Both report progress through ``progress(done,
total)`` from the pipeline's own window plan.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from meltok_runtime.io.atomic import check_new_output
from meltok_runtime.io.audio import load_audio, output_format, write_audio
from meltok_runtime.pipeline import CodecPipeline
from meltok_runtime.io.tokenfile import FORMAT_VERSION, TokenFile, check_token_file, read_tokens, write_token_file
from meltok_runtime.windowing import Progress

log = logging.getLogger("meltok_runtime")

TOKEN_SUFFIXES = (".mtok",)


@dataclass(frozen=True)
class DecodedFiles:
    """What ``decode_file`` wrote: one path per item, their rate and lengths, and the rate the
    token file records for the original audio (None in files from older versions)."""

    paths: list
    sample_rate: int
    num_samples: list
    recorded_rate: int | None


def encode_file(codec: CodecPipeline, source, output, *, force: bool = False,
                progress: Progress | None = None) -> TokenFile:
    """Encode the audio file ``source`` into the token file ``output``; returns what was written."""
    output = check_new_output(output, inputs=[source], force=force, suffixes=TOKEN_SUFFIXES, what="token file")
    samples, rate = load_audio(source)
    return encode_audio(codec, samples, rate, output, name=str(source), progress=progress)


def encode_audio(codec: CodecPipeline, samples, rate: int, output, *, name: str,
                 progress: Progress | None = None) -> TokenFile:
    """Encode float32 audio ``[C, N]`` at ``rate`` (read from ``name``) into the token file ``output``
    (already checked), recording the rate, length and channels it had; returns what was written."""
    written = token_file_of(codec, samples, rate, progress=progress, name=name)
    write_token_file(output, written)
    return written


def token_file_of(codec: CodecPipeline, samples, rate: int, *, progress: Progress | None = None,
                  name: str | None = None) -> TokenFile:
    """The ``TokenFile`` of float32 audio ``[C, N]`` at ``rate``: tokens of the prepared audio and the
    rate, length and channels the audio had (what ``meltok-rt encode`` and the server's encode write).
    With ``name`` (where the audio came from), a mixdown and a resampling are logged once the audio
    passed its checks."""
    batch = codec.prepare(samples[None], rate)
    if name is not None:
        if samples.shape[0] > 1:
            log.warning("mixing the %d channels of %s down to mono", samples.shape[0], name)
        if rate != codec.sample_rate:
            log.warning("resampling %s from %d Hz to %d Hz", name, rate, codec.sample_rate)
    tokens = codec.encode_prepared(batch, progress=progress)
    return TokenFile(tokens=tokens, sample_rate=codec.sample_rate, num_samples=[batch.shape[-1]],
                     model_id=codec.model_id, codebook_size=codec.codebook_size, version=FORMAT_VERSION,
                     source_sample_rate=rate, source_num_samples=[samples.shape[-1]], channels=samples.shape[0])


def decode_file(codec: CodecPipeline, source, output, *, original_rate: bool = False, force: bool = False,
                subtype: str | None = None, progress: Progress | None = None) -> DecodedFiles:
    """Decode the token file ``source`` into audio file(s) at ``output``; returns what was written.

    Each item is trimmed to its encoded length; a file of B > 1 items gives ``OUT-0.wav``,
    ``OUT-1.wav``, ... ``original_rate`` restores the rate and lengths recorded at encoding.
    """
    output_format(output, subtype)
    token_file = read_tokens(source)
    targets = output_paths(output, len(token_file.num_samples))
    longest = [max(pair) for pair in zip(token_file.num_samples,
                                         token_file.source_num_samples or token_file.num_samples)]
    for target, length in zip(targets, longest):  # room for 4 bytes a sample (float, the largest subtype)
        check_new_output(target, inputs=[source], force=force, what="audio file", needed_bytes=4 * length)
    check_token_file(token_file, model_id=codec.model_id, sample_rate=codec.sample_rate, source=source,
                     accepted=codec.accepts_tokens_of)
    rate, lengths = codec.sample_rate, token_file.num_samples
    if original_rate and token_file.source_sample_rate is None:
        log.warning("%s records no original sample rate (written by an older meltok); decoding at %d Hz",
                    source, rate)
    elif original_rate:
        rate, lengths = token_file.source_sample_rate, token_file.source_num_samples
    audio = codec.decode(token_file.tokens, num_samples=max(lengths), sample_rate=rate, progress=progress)
    for target, item, length in zip(targets, audio, lengths):
        write_audio(target, item[:length], rate, subtype=subtype)
    return DecodedFiles(targets, rate, lengths, token_file.source_sample_rate)


def output_paths(output, items: int) -> list[Path]:
    """``[output]`` for one item, else ``OUT-0.wav``, ``OUT-1.wav``, ..."""
    output = Path(output)
    if items == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{index}{output.suffix}") for index in range(items)]
