"""Standard input and output of ``encode -`` and ``decode --stream`` (both command lines).

``encode_stdin``: a finished pipe is read whole (a WAV recognised by its header, else raw PCM as
described) and encoded like a file (``io.files.encode_audio``: the offline windows), so a pipe and a
file of the same audio give the same tokens. ``encode_live``: audio is encoded as it arrives by
``codec.stream_encoder`` (resampled on the way if needed); its token file records ``streamed`` and
the lookahead. ``decode_to_stream``: a token file -> ``codec.stream_decoder``, pushed a few columns
at a time -> audio written to a byte stream as it is decoded (``io.pcm.PcmWriter``), at the model's
rate or the original one, trimmed to the encoded length.
"""
from __future__ import annotations

import logging
from typing import BinaryIO, Callable

import numpy as np

from meltok_runtime.errors import AudioInputError, TokenInputError
from meltok_runtime.io.atomic import check_new_output
from meltok_runtime.io.files import TOKEN_SUFFIXES, encode_audio
from meltok_runtime.io.pcm import PcmLayout, PcmWriter, open_live, read_whole
from meltok_runtime.io.tokenfile import FORMAT_VERSION, TokenFile, check_token_file, read_tokens, write_token_file
from meltok_runtime.pipeline import CodecPipeline
from meltok_runtime.windowing import Progress

log = logging.getLogger("meltok_runtime")


def encode_stdin(codec: CodecPipeline, source: BinaryIO, output, *, layout: PcmLayout, force: bool = False,
                 progress: Progress | None = None) -> TokenFile:
    """Read ``source`` to its end (a WAV, or raw PCM in ``layout``) and encode it as a file is encoded."""
    output = check_new_output(output, force=force, suffixes=TOKEN_SUFFIXES, what="token file")
    audio, layout = read_whole(source, layout)
    if not audio.shape[-1]:
        raise AudioInputError("standard input held no audio; pipe a WAV or raw PCM into it")
    log.info("standard input: %s, %d channel(s) at %d Hz", layout.source, layout.channels, layout.rate)
    return encode_audio(codec, audio, layout.rate, output, name="standard input", progress=progress)


def encode_live(codec: CodecPipeline, source: BinaryIO, output, *, layout: PcmLayout, lookahead_seconds: float,
                force: bool = False, progress: Callable[[float], None] | None = None) -> TokenFile:
    """Encode ``source`` (a WAV, or raw PCM in ``layout``) as it arrives through a stream into the
    token file ``output``; ``progress(seconds)`` once a second of input."""
    output = check_new_output(output, force=force, suffixes=TOKEN_SUFFIXES, what="token file")
    stream = codec.stream_encoder(lookahead_seconds=lookahead_seconds)
    layout, blocks = open_live(source, layout)
    resampler = None
    if layout.rate != codec.sample_rate:
        import soxr

        log.warning("resampling standard input from %d Hz to %d Hz as it arrives", layout.rate, codec.sample_rate)
        resampler = soxr.ResampleStream(layout.rate, codec.sample_rate, 1, dtype="float32", quality="HQ")
    parts, samples, resampled = [], 0, 0
    for block in blocks:
        samples += len(block)
        if progress is not None and samples // layout.rate > (samples - len(block)) // layout.rate:
            progress(samples / layout.rate)
        if resampler is not None:
            block = resampler.resample_chunk(block)
        parts.append(stream.push(block))
        resampled += len(block)
    if not samples:
        raise AudioInputError("standard input held no audio; pipe a WAV or raw PCM into it")
    if resampler is not None:
        tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        parts.append(stream.push(tail))
        resampled += len(tail)
    tokens = np.concatenate(parts + [stream.flush()], axis=1)[None]
    written = TokenFile(tokens=tokens, sample_rate=codec.sample_rate, num_samples=[resampled], model_id=codec.model_id,
                        codebook_size=codec.codebook_size, version=FORMAT_VERSION, source_sample_rate=layout.rate,
                        source_num_samples=[samples], channels=layout.channels, streamed=True,
                        lookahead_seconds=float(lookahead_seconds))
    write_token_file(output, written)
    return written


def decode_to_stream(codec: CodecPipeline, source, sink: BinaryIO, *, output_format: str, push_columns: int,
                     lookahead_seconds: float, original_rate: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> tuple[TokenFile, int]:
    """Decode the token file ``source`` (one item) through a stream, writing ``output_format`` audio to
    ``sink`` as it comes, at the model's rate or (``original_rate``) the one recorded in the file;
    ``progress(columns pushed, columns)`` after each push. Returns the token file and the rate written."""
    token_file = read_tokens(source)
    check_token_file(token_file, model_id=codec.model_id, sample_rate=codec.sample_rate, source=source,
                     accepted=codec.accepts_tokens_of)
    if token_file.tokens.shape[0] != 1:
        raise TokenInputError(f"--stream decodes one item; {token_file.tokens.shape[0]} are in {source}: decode "
                              "it without --stream")
    tokens, rate, length = token_file.tokens[0], codec.sample_rate, token_file.num_samples[0]
    resampler = None
    if original_rate and token_file.source_sample_rate is None:
        log.warning("%s records no original rate (an older file): writing %d Hz", source, rate)
    elif original_rate and token_file.source_sample_rate != rate:
        import soxr

        rate, length = token_file.source_sample_rate, token_file.source_num_samples[0]
        resampler = soxr.ResampleStream(codec.sample_rate, rate, 1, dtype="float32", quality="HQ")
    writer = PcmWriter(sink, output_format, rate)
    stream = codec.stream_decoder(lookahead_seconds=lookahead_seconds)

    def emit(audio: np.ndarray, last: bool = False) -> None:
        if resampler is not None:
            audio = resampler.resample_chunk(audio, last=last)
        writer.write(audio[:max(0, length - writer.samples)])

    for start in range(0, tokens.shape[1], push_columns):
        emit(stream.push(tokens[:, start:start + push_columns]))
        if progress is not None:
            progress(min(start + push_columns, tokens.shape[1]), tokens.shape[1])
    emit(stream.flush(), last=True)
    writer.write(np.zeros(max(0, length - writer.samples), np.float32))  # a resampler may end a few samples short
    writer.close()
    return token_file, rate
