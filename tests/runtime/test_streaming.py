"""Streams (meltok_runtime.stream): exact for time-local models, same length as offline for any push
schedule, bounded state over ten minutes, typed errors that leave the stream usable, many streams on
one Codec from threads, and no click at the joins of the shipped (reference) model on real music.

Bookkeeping tests use a numpy fake model whose receptive field is known by construction (each token
sums a fixed span of samples; each column adds a box of fixed span to the audio; window edges show,
as the real model's padding does), so they run in a second; the real models follow.
"""
import threading

import numpy as np
import pytest

from meltok_runtime import Codec
from meltok_runtime.errors import (AudioInputError, CodeRangeError, ModelMismatchError, StreamClosedError,
                                   TokenInputError)
from meltok_runtime.lengths import decoded_length, padded_length, token_columns
from meltok_runtime.stream import StreamDecoder, StreamEncoder, StreamSpec

RATE, HOP, COMPRESSION, ROWS, CODES = 44100, 256, 8, 12, 8192
COLUMN = HOP * COMPRESSION
ENCODER_SPAN, DECODER_SPAN = (-5000, 7000), (-6000, 8000)  # not on the column grid on purpose


def fake_encode(audio: np.ndarray) -> np.ndarray:
    """``[1, n] -> [1, ROWS, T']``: column j from the samples in ``[S j + lo, S j + hi]``, marked at edges."""
    n = audio.shape[1]
    out = np.empty((1, ROWS, token_columns(n, HOP, COMPRESSION)), dtype=np.int64)
    for j in range(out.shape[2]):
        lo, hi = COLUMN * j + ENCODER_SPAN[0], COLUMN * j + ENCODER_SPAN[1] + 1
        value = int(np.abs(audio[0, max(lo, 0):min(hi, n)].astype(np.float64)).sum() * 1000)
        out[0, :, j] = (value + 7 * (lo < 0) + 13 * (hi > n) + 977 * np.arange(ROWS)) % CODES
    return out


def fake_decode(tokens: np.ndarray) -> np.ndarray:
    """``[1, ROWS, w] -> [1, (8w - 1) * hop]``: column c adds a box over ``[S c + lo, S c + hi]``."""
    width = tokens.shape[2]
    n = decoded_length(width, HOP, COMPRESSION)
    steps = np.zeros(n + 1)
    for c, value in enumerate(tokens[0].mean(axis=0) / CODES):
        lo, hi = max(0, COLUMN * c + DECODER_SPAN[0]), min(n, COLUMN * c + DECODER_SPAN[1] + 1)
        if lo < hi:
            steps[lo] += value
            steps[hi] -= value
    return (np.cumsum(steps)[:n] * np.sin(2 * np.pi * np.arange(n) / 512))[None].astype(np.float32)


def fake_spec(time_local: bool = True, max_columns: int = 40) -> StreamSpec:
    spans = dict(encoder_dependency=ENCODER_SPAN, decoder_influence=DECODER_SPAN) if time_local else {}
    return StreamSpec(RATE, HOP, COMPRESSION, ROWS, CODES, max_columns, **spans)


def run_encoder(stream, audio, sizes):
    parts, start = [], 0
    for size in sizes:
        parts.append(stream.push(audio[start:start + size]))
        start += size
    parts.append(stream.push(audio[start:]))
    parts.append(stream.flush())
    assert all(p.dtype == np.int64 and p.shape[0] == ROWS for p in parts)
    return np.concatenate(parts, axis=1)


def run_decoder(stream, tokens, sizes):
    parts, start = [], 0
    for size in sizes:
        parts.append(stream.push(tokens[:, start:start + size]))
        start += size
    parts.append(stream.push(tokens[:, start:]))
    parts.append(stream.flush())
    assert all(p.dtype == np.float32 and p.ndim == 1 for p in parts)
    return np.concatenate(parts), [len(p) for p in parts]


def offline_encode(audio):
    padded = np.pad(audio, (0, padded_length(len(audio), HOP, COMPRESSION) - len(audio)))
    return fake_encode(padded[None])[0]


@pytest.fixture(scope="module")
def audio(real_clips):
    return real_clips["music"][:5 * RATE]


SCHEDULES = {"one": [1] * 300, "random": "random", "huge": [3 * RATE], "empty-first": [0, 0, 5, 0]}


def _sizes(name, scale, seed=0):
    if SCHEDULES[name] == "random":
        return list(np.random.default_rng(seed).integers(0, 3 * scale, 40))
    return [s if name != "one" else scale for s in SCHEDULES[name]]


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("lookahead", [0.0, 0.3])
def test_time_local_streams_equal_offline(audio, schedule, lookahead):
    tokens = offline_encode(audio)
    encoder = StreamEncoder(fake_encode, fake_spec(), lookahead_seconds=lookahead, context_seconds=0.0)
    np.testing.assert_array_equal(run_encoder(encoder, audio, _sizes(schedule, 4000)), tokens)
    decoder = StreamDecoder(fake_decode, fake_spec(), lookahead_seconds=lookahead, context_seconds=0.0)
    streamed, _ = run_decoder(decoder, tokens, _sizes(schedule, 3))
    offline = fake_decode(tokens[None])[0]
    assert streamed.shape == offline.shape
    np.testing.assert_allclose(streamed, offline, rtol=0, atol=1e-6)


def test_lookahead_and_context_decide_exactness_of_approximate_streams(audio):
    """Without spans (as for the reference model), enough lookahead and context reproduce the fake
    exactly and too little does not; lengths always match offline."""
    tokens = offline_encode(audio)
    offline = fake_decode(tokens[None])[0]
    for lookahead, context, exact in ((0.2, 0.2, True), (0.05, 0.0, False)):
        encoder = StreamEncoder(fake_encode, fake_spec(False), lookahead_seconds=lookahead, context_seconds=context)
        streamed_tokens = run_encoder(encoder, audio, _sizes("random", 4000))
        assert streamed_tokens.shape == tokens.shape and np.array_equal(streamed_tokens, tokens) == exact
        decoder = StreamDecoder(fake_decode, fake_spec(False), lookahead_seconds=lookahead, context_seconds=context)
        streamed, _ = run_decoder(decoder, tokens, _sizes("random", 3))
        assert streamed.shape == offline.shape and np.allclose(streamed, offline, atol=1e-6) == exact
        assert not encoder.exact and not decoder.exact


def test_latency_counts_lookahead_fade_and_receptive_field():
    decoder = StreamDecoder(fake_decode, fake_spec(False), lookahead_seconds=0.1, fade_seconds=0.02)
    assert decoder.latency_seconds == pytest.approx((4410 + 882 + COLUMN) / RATE)
    encoder = StreamEncoder(fake_encode, fake_spec(False), lookahead_seconds=0.1)
    assert encoder.latency_seconds == pytest.approx((COLUMN + 4410) / RATE)
    exact = StreamDecoder(fake_decode, fake_spec(), lookahead_seconds=0.0, fade_seconds=0.0)
    assert exact.latency_seconds == pytest.approx((-DECODER_SPAN[0] + COLUMN) / RATE)


def test_ten_minute_streams_hold_flat_state():
    """10 minutes in pushes of 0.1 s (encoder) and one column (decoder): the buffered state never
    exceeds a few windows and is as large at the end as after the first minute (within one column)."""
    spec = fake_spec(False)
    encoder = StreamEncoder(fake_encode, spec, lookahead_seconds=0.2, context_seconds=0.5)
    push = RATE // 10
    sizes, columns = [], 0
    tone = np.sin(2 * np.pi * 440 * np.arange(push) / RATE).astype(np.float32) * 0.3
    for index in range(600 * 10):
        columns += encoder.push(tone * (1 + index % 7) / 7).shape[1]
        sizes.append(encoder.state_nbytes)
    columns += encoder.flush().shape[1]
    assert columns == token_columns(padded_length(600 * RATE, HOP, COMPRESSION), HOP, COMPRESSION)
    bound = 4 * (encoder.right + 1 - encoder.left + COLUMN + push)
    assert max(sizes) <= bound and abs(max(sizes[-600:]) - max(sizes[600:1200])) <= 4 * COLUMN  # flat

    def silent_decode(tokens):  # the state's size, not the audio, is under test here
        return np.zeros((1, decoded_length(tokens.shape[2], HOP, COMPRESSION)), dtype=np.float32)

    decoder = StreamDecoder(silent_decode, spec, lookahead_seconds=0.2, context_seconds=0.5)
    tokens = np.arange(ROWS, dtype=np.int64)[:, None] * 100
    sizes, samples = [], 0
    for index in range(columns):
        samples += len(decoder.push(tokens + index % 50))
        sizes.append(decoder.state_nbytes)
    samples += len(decoder.flush())
    assert samples == decoded_length(columns, HOP, COMPRESSION)
    bound = 8 * ROWS * ((decoder.behind + decoder.ahead + decoder.fade) // COLUMN + 3) + 4 * decoder.fade
    assert max(sizes) <= bound and abs(max(sizes[-1000:]) - max(sizes[1000:2000])) <= 8 * ROWS  # flat


def test_bad_input_raises_typed_errors_and_leaves_the_stream_usable(audio):
    tokens = offline_encode(audio)
    decoder = StreamDecoder(fake_decode, fake_spec())
    parts = [decoder.push(tokens[:, :10])]
    bad = {ModelMismatchError: tokens[:11, :3], CodeRangeError: np.full((ROWS, 2), CODES),
           TokenInputError: tokens[:, :3].astype(np.float32)}
    for error, value in bad.items():
        with pytest.raises(error):
            decoder.push(value)
    with pytest.raises(TokenInputError, match="one item"):
        decoder.push(np.stack([tokens[:, :2], tokens[:, :2]]))
    parts += [decoder.push(tokens[None, :, 10:]), decoder.flush()]
    np.testing.assert_allclose(np.concatenate(parts), fake_decode(tokens[None])[0], rtol=0, atol=1e-6)
    with pytest.raises(StreamClosedError):
        decoder.push(tokens[:, :1])
    with pytest.raises(StreamClosedError):
        decoder.flush()

    encoder = StreamEncoder(fake_encode, fake_spec())
    chunks = [encoder.push(audio[:50000])]
    broken = audio[50000:60000].copy()
    broken[5] = np.nan
    for value, match in ((broken, "NaN"), ((audio[50000:60000] * 32767).astype(np.int16), "dtype"),
                         (np.stack([audio[:10], audio[:10]]), "mono")):
        with pytest.raises(AudioInputError, match=match):
            encoder.push(value)
    chunks += [encoder.push(audio[50000:]), encoder.flush()]
    np.testing.assert_array_equal(np.concatenate(chunks, axis=1), tokens)
    with pytest.raises(StreamClosedError):
        encoder.push(audio[:10])


def test_options_out_of_range_are_refused():
    with pytest.raises(ValueError, match="lookahead_seconds"):
        StreamDecoder(fake_decode, fake_spec(), lookahead_seconds=-1)
    with pytest.raises(ValueError, match="at most 40"):
        StreamEncoder(fake_encode, fake_spec(max_columns=40), context_seconds=3.0)


def test_empty_streams_give_empty_results():
    assert StreamDecoder(fake_decode, fake_spec()).flush().shape == (0,)
    assert StreamEncoder(fake_encode, fake_spec()).flush().shape == (ROWS, 0)


# ----------------------------------------------------------------------------- real models
def test_time_local_bundle_streams_equal_offline(tiny_local_bundle, real_clips):
    from meltok.receptive_field import stream_contract

    model, folder = tiny_local_bundle
    clip = real_clips["speech"][:3 * RATE]
    with Codec.open(folder, backend="ort-cpu", threads=2) as codec:
        assert codec.manifest.streaming == stream_contract(model.config) != {}
        tokens = codec.encode(clip)[0]
        encoder = codec.stream_encoder(lookahead_seconds=0.1)
        np.testing.assert_array_equal(run_encoder(encoder, clip, [9000, 1, 0, 30000, 44100]), tokens)
        np.testing.assert_array_equal(tokens, model.encode(clip)[0])  # and the same tokens as PyTorch
        offline = codec.decode(tokens)[0]
        streamed, _ = run_decoder(codec.stream_decoder(lookahead_seconds=0.0), tokens, [1, 0, 5, 13, 7])
    assert encoder.exact and streamed.shape == offline.shape
    np.testing.assert_allclose(streamed, offline, rtol=0, atol=1e-5 * np.abs(offline).max())


def test_streams_from_threads_on_one_codec_equal_serial_streams(codec, real_clips):
    clips = [real_clips[name][:2 * RATE] for name in ("music", "speech", "effects")]

    def work(clip):
        tokens = run_encoder(codec.stream_encoder(), clip, [5000] * 10)
        return tokens, run_decoder(codec.stream_decoder(), tokens, [3] * 8)[0]

    serial = [work(clip) for clip in clips]
    results = [None] * len(clips)

    def target(index):
        results[index] = work(clips[index])

    threads = [threading.Thread(target=target, args=(i,)) for i in range(len(clips))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for (tokens, audio), (want_tokens, want_audio) in zip(results, serial):
        np.testing.assert_array_equal(tokens, want_tokens)
        np.testing.assert_allclose(audio, want_audio, rtol=0, atol=1e-6)


def test_reference_model_stream_has_no_click_at_joins(real_clips):
    """The shipped model (reference architecture) on real music: around every join the largest
    sample-to-sample step is no larger than elsewhere, and the stream stays close to offline decoding."""
    clip = real_clips["music"]
    with Codec.open(backend="ort-cpu", threads=2) as codec:
        tokens = codec.encode(clip)[0]
        offline = codec.decode(tokens)[0]
        decoder = codec.stream_decoder()
        streamed, lengths = run_decoder(decoder, tokens, [4] * (tokens.shape[1] // 4))
    assert streamed.shape == offline.shape and not decoder.exact
    steps = np.abs(np.diff(streamed))
    near = np.zeros(len(steps), dtype=bool)
    for join in np.cumsum(lengths)[:-1]:
        near[max(0, join - 64):join + decoder.fade + 64] = True
    assert near.sum() > 0.05 * len(steps)
    print(f"largest step near joins {steps[near].max():.4f}, elsewhere {steps[~near].max():.4f}")
    assert steps[near].max() <= steps[~near].max()
    snr = 10 * np.log10(np.sum(offline ** 2) / np.sum((streamed - offline) ** 2))
    print(f"stream vs offline SNR {snr:.1f} dB")
    assert snr > 5.0
