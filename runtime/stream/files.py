"""The streamed file pipeline of ``encode -`` and ``decode --stream`` (both command lines).

``encode_pcm_stream``: raw PCM read from a byte stream as it arrives (``pcm_stream.read_pcm_blocks``)
-> ``codec.stream_encoder`` -> a token file, checked and written like ``codec_files.encode_file``'s.
``decode_to_stream``: a token file -> ``codec.stream_decoder``, pushed a few columns at a time ->
audio written to a byte stream as it is decoded (``pcm_stream.PcmWriter``), trimmed to the encoded
length. ``progress`` callbacks get seconds encoded / columns decoded.
"""
from __future__ import annotations

from typing import BinaryIO, Callable

import numpy as np

from meltok_runtime.io.atomic import check_new_output
from meltok_runtime.io.files import TOKEN_SUFFIXES
from meltok_runtime.errors import AudioInputError, TokenInputError
from meltok_runtime.io.pcm import PcmWriter, read_pcm_blocks
from meltok_runtime.pipeline import CodecPipeline
from meltok_runtime.io.tokenfile import FORMAT_VERSION, TokenFile, check_token_file, read_tokens, write_tokens


def encode_pcm_stream(codec: CodecPipeline, source: BinaryIO, output, *, input_format: str, rate: int,
                      channels: int = 1, lookahead_seconds: float, force: bool = False,
                      progress: Callable[[float], None] | None = None) -> TokenFile:
    """Encode raw PCM from ``source`` (``input_format``, ``channels`` interleaved, at ``rate`` = the
    model's) into the token file ``output`` as it arrives; ``progress(seconds)`` once a second."""
    output = check_new_output(output, force=force, suffixes=TOKEN_SUFFIXES, what="token file")
    if rate != codec.sample_rate:
        raise AudioInputError(f"standard input at {rate} Hz, but this model takes {codec.sample_rate} Hz; resample "
                              f"before the pipe (e.g. sox ... -r {codec.sample_rate}) and pass --rate")
    stream = codec.stream_encoder(lookahead_seconds=lookahead_seconds)
    parts, samples = [], 0
    for block in read_pcm_blocks(source, input_format, channels):
        parts.append(stream.push(block))
        samples += len(block)
        if progress is not None and samples // rate > (samples - len(block)) // rate:
            progress(samples / rate)
    if not samples:
        raise AudioInputError("the input held no audio; pipe raw PCM into standard input")
    tokens = np.concatenate(parts + [stream.flush()], axis=1)[None]
    written = TokenFile(tokens=tokens, sample_rate=codec.sample_rate, num_samples=[samples], model_id=codec.model_id,
                        codebook_size=codec.codebook_size, version=FORMAT_VERSION, source_sample_rate=rate,
                        source_num_samples=[samples])
    write_tokens(output, tokens, sample_rate=written.sample_rate, num_samples=written.num_samples,
                 model_id=written.model_id, codebook_size=written.codebook_size, source_sample_rate=rate,
                 source_num_samples=written.source_num_samples)
    return written


def decode_to_stream(codec: CodecPipeline, source, sink: BinaryIO, *, output_format: str, push_columns: int,
                     lookahead_seconds: float, progress: Callable[[int, int], None] | None = None) -> TokenFile:
    """Decode the token file ``source`` (one item) through a stream, writing ``output_format`` audio to
    ``sink`` as it comes; ``progress(columns pushed, columns)`` after each push."""
    token_file = read_tokens(source)
    check_token_file(token_file, model_id=codec.model_id, sample_rate=codec.sample_rate, source=source)
    if token_file.tokens.shape[0] != 1:
        raise TokenInputError(f"--stream decodes one item; {token_file.tokens.shape[0]} are in {source}: decode "
                              "it without --stream")
    tokens, length = token_file.tokens[0], token_file.num_samples[0]
    writer = PcmWriter(sink, output_format, codec.sample_rate)
    stream = codec.stream_decoder(lookahead_seconds=lookahead_seconds)

    def emit(audio: np.ndarray) -> None:
        writer.write(audio[:max(0, length - writer.samples)])

    for start in range(0, tokens.shape[1], push_columns):
        emit(stream.push(tokens[:, start:start + push_columns]))
        if progress is not None:
            progress(min(start + push_columns, tokens.shape[1]), tokens.shape[1])
    emit(stream.flush())
    return token_file
