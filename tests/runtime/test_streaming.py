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
from meltok_runtime.windowing import WindowedDecoder, WindowedEncoder, WindowGrid, decode_windowed, encode_windowed

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


def test_offline_windows_are_the_stream_planner_given_everything_at_once(audio):
    """The planner streams run, on the offline layout (context on both sides, the rest kept, the context
    as fade) and fed in random pieces, gives exactly what offline windowing gives: one planner for both."""
    window, context = 20, 2  # too little context for the fake: windows show
    padded = np.pad(audio, (0, padded_length(len(audio), HOP, COMPRESSION) - len(audio)))
    offline = encode_windowed(padded[None], fake_encode, window_columns=window, context_columns=context, hop=HOP,
                              compression=COMPRESSION)[0]
    assert not np.array_equal(offline, offline_encode(audio))  # the windows show
    grid = WindowGrid.centred(window, context)
    encoder, parts, start = WindowedEncoder(fake_encode, grid, HOP, COMPRESSION), [], 0
    for size in _sizes("random", 4000):
        parts.append(encoder.push(padded[None, start:start + size]))
        start += size
    parts.append(encoder.push(padded[None, start:], final=True))
    np.testing.assert_array_equal(np.concatenate([p for p in parts if p.shape[-1]], axis=-1)[0], offline)
    offline_audio = decode_windowed(offline[None], fake_decode, window_columns=window, context_columns=context, hop=HOP,
                                    compression=COMPRESSION)[0]
    half = min(round(context * COLUMN / 2), context * COLUMN - HOP)  # as decode_windowed's default fade
    decoder, pieces, start = WindowedDecoder(fake_decode, grid, HOP, COMPRESSION, half), [], 0
    for size in _sizes("random", 3):
        pieces.append(decoder.push(offline[None, :, start:start + size]))
        start += size
    pieces.append(decoder.push(offline[None, :, start:], final=True))
    np.testing.assert_array_equal(np.concatenate(pieces, axis=-1)[0], offline_audio)


def test_a_stream_gives_its_first_output_without_waiting_for_a_whole_context(audio):
    """Stream windows are clipped at the start: the first tokens need the first step and the lookahead
    (not a whole window of left context that does not exist), and so does the first audio."""
    context, lookahead, step = 1.0, 0.2, 0.1
    encoder = StreamEncoder(fake_encode, fake_spec(False), lookahead_seconds=lookahead, context_seconds=context,
                            step_seconds=step)
    needed = int((step + lookahead) * RATE) + 2 * COLUMN  # the first step, the lookahead, rounding to columns
    assert encoder.push(audio[:needed]).shape[-1] > 0
    decoder = StreamDecoder(fake_decode, fake_spec(False), lookahead_seconds=lookahead, context_seconds=context,
                            step_seconds=step)
    tokens = offline_encode(audio)
    assert decoder.push(tokens[:, :int((step + lookahead) * RATE / COLUMN) + 2]).shape[-1] > 0


class RunningPhase:
    """A stateful fake vocoder (``windowing.StatefulDecode``): each column sets a frequency, the phase
    runs on from sample to sample, so a window is right only if it starts from the phase before it."""

    def initial_state(self, batch):
        return np.zeros(batch)

    def __call__(self, tokens, state, carry):
        speed = 0.02 + 0.2 * tokens[:, 0, :] / CODES  # radians per sample, per column  [B, w]
        steps = np.repeat(speed, COLUMN, axis=1)[:, :decoded_length(tokens.shape[2], HOP, COMPRESSION)]
        phase = state[:, None] + np.concatenate([np.zeros((len(state), 1)), np.cumsum(steps, axis=1)], axis=1)
        return np.sin(phase[:, :-1]).astype(np.float32), phase[:, min(carry * COLUMN, steps.shape[1])]


def test_state_is_carried_from_window_to_window_offline_and_in_streams(audio):
    tokens = offline_encode(audio)
    whole = RunningPhase()(tokens[None], np.zeros(1), 0)[0][0]
    layout = dict(window_columns=12, context_columns=2, hop=HOP, compression=COMPRESSION)
    windowed = decode_windowed(tokens[None], RunningPhase(), **layout)[0]
    np.testing.assert_allclose(windowed, whole, rtol=0, atol=1e-4)
    stateless = decode_windowed(tokens[None], lambda t: RunningPhase()(t, np.zeros(len(t)), 0)[0], **layout)[0]
    assert np.abs(stateless - whole).max() > 0.5  # without the state the phase jumps at every window
    decoder = StreamDecoder(RunningPhase(), fake_spec(False), lookahead_seconds=0.1, context_seconds=0.1)
    streamed, _ = run_decoder(decoder, tokens, _sizes("random", 3))
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-4)


def test_latency_counts_step_lookahead_fade_and_receptive_field():
    """Windows of whole columns: 0.1 s of lookahead and of step are 2 columns each."""
    decoder = StreamDecoder(fake_decode, fake_spec(False), lookahead_seconds=0.1, fade_seconds=0.02, step_seconds=0.1)
    assert decoder.latency_seconds == pytest.approx((4 * COLUMN + 441) / RATE)
    encoder = StreamEncoder(fake_encode, fake_spec(False), lookahead_seconds=0.1, step_seconds=0.1)
    assert encoder.latency_seconds == pytest.approx((4 * COLUMN - HOP + 1) / RATE)
    exact = StreamDecoder(fake_decode, fake_spec(), lookahead_seconds=0.0, fade_seconds=0.0, step_seconds=0.0)
    assert exact.grid.right == -(-(-DECODER_SPAN[0]) // COLUMN)  # the receptive field sets the lookahead
    assert exact.latency_seconds == pytest.approx((1 + exact.grid.right) * COLUMN / RATE)


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
    bound = 4 * (COLUMN * (encoder.grid.window + encoder.grid.step) + push)
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
    grid = decoder.grid
    bound = 8 * ROWS * (grid.window + grid.step + 1) + 4 * (COLUMN * grid.right + decoder.fade)
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
    assert encoder.exact and streamed.shape == offline.shape and encoder.state_nbytes == 0  # flushed: nothing held
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
    """The shipped model (reference architecture) on real music: around every window join the largest
    sample-to-sample step is no larger than offline decoding has there, and the stream stays close to it."""
    clip = real_clips["music"]
    with Codec.open(backend="ort-cpu", threads=2) as codec:
        tokens = codec.encode(clip)[0]
        offline = codec.decode(tokens)[0]
        decoder = codec.stream_decoder()
        streamed, _ = run_decoder(decoder, tokens, [4] * (tokens.shape[1] // 4))
    assert streamed.shape == offline.shape and not decoder.exact
    grid, half = decoder.grid, decoder.fade // 2
    near = np.zeros(len(streamed) - 1, dtype=bool)
    for join in range(COLUMN * (grid.step + grid.left), len(near), COLUMN * grid.step):
        near[join - half - 64:join + half + 64] = True
    steps, offline_steps = np.abs(np.diff(streamed)), np.abs(np.diff(offline))
    print(f"largest step near joins {steps[near].max():.4f}, offline there {offline_steps[near].max():.4f}")
    assert steps[near].max() <= 1.1 * offline_steps[near].max()
    snr = 10 * np.log10(np.sum(offline ** 2) / np.sum((streamed - offline) ** 2))
    print(f"stream vs offline SNR {snr:.1f} dB")
    assert snr > 5.0


@pytest.fixture(scope="module")
def shipped():
    with Codec.open(backend="ort-cpu", threads=2) as opened:
        yield opened


def test_stream_tokens_depend_only_on_the_audio_not_on_the_pushes(shipped, real_clips):
    """The shipped model on real music: one push, 50 ms pushes and random pushes give the same tokens."""
    clip = real_clips["music"][:5 * RATE]
    results = {}
    for name, sizes in (("one", [len(clip)]), ("50 ms", [RATE // 20] * (len(clip) // (RATE // 20))),
                        ("random", list(np.random.default_rng(1).integers(0, 20000, 40)))):
        results[name] = run_encoder(shipped.stream_encoder(), clip, sizes)
    assert results["one"].shape == shipped.encode(clip)[0].shape
    for name, tokens in results.items():
        np.testing.assert_array_equal(tokens, results["one"], err_msg=name)


class FailOnce:
    """A graph call that raises once, at its ``when``-th call, as a backend might mid-push."""

    def __init__(self, graph, when):
        self.graph, self.calls, self.when = graph, 0, when

    def __call__(self, *args):
        self.calls += 1
        if self.calls == self.when:
            raise RuntimeError("backend failed")
        return self.graph(*args)


def test_a_graph_error_mid_push_loses_nothing_and_the_push_can_be_retried(shipped, real_clips, monkeypatch):
    clip = real_clips["speech"][:4 * RATE]
    tokens = shipped.encode(clip)[0]
    reference = run_decoder(shipped.stream_decoder(), tokens, [10] * (tokens.shape[1] // 10))[0]
    monkeypatch.setattr(shipped, "_decode_graph", FailOnce(shipped._decode_graph, when=9))
    decoder, parts = shipped.stream_decoder(), []
    for start in range(0, tokens.shape[1], 10):  # pushes of 10 columns: several windows each
        try:
            parts.append(decoder.push(tokens[:, start:start + 10]))
        except RuntimeError:
            parts.append(decoder.push(tokens[:, start:start + 10]))
    parts.append(decoder.flush())
    assert shipped._decode_graph.calls > 9
    np.testing.assert_array_equal(np.concatenate(parts), reference)

    want = run_encoder(shipped.stream_encoder(), clip, [RATE // 2] * 8)
    monkeypatch.setattr(shipped, "_encode_graph", FailOnce(shipped._encode_graph, when=5))
    encoder, parts = shipped.stream_encoder(), []
    for start in range(0, len(clip), RATE // 2):
        try:
            parts.append(encoder.push(clip[start:start + RATE // 2]))
        except RuntimeError:
            parts.append(encoder.push(clip[start:start + RATE // 2]))
    parts.append(encoder.flush())
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), want)
