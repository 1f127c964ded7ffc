"""``Codec``: the MelTok user API over a bundle (ort-cpu here), against the torch model and the
reference fixture; batches, limits, input checks, and concurrent use."""
import dataclasses
import threading

import numpy as np
import pytest

from meltok_runtime import Codec
from meltok_runtime.io.audio import load_audio
from meltok_runtime.errors import AudioInputError, CodeRangeError, ModelMismatchError, TokenInputError
from meltok_runtime.lengths import decoded_length, padded_length, token_columns
from meltok_runtime.manifest import load_manifest

from .conftest import DATA


@pytest.fixture(scope="module")
def speech():
    audio, rate = load_audio(DATA / "speech.flac")
    return audio.mean(axis=0)[: 2 * rate]


def test_contract_properties(codec, tiny_model):
    assert codec.backend == "ort-cpu" and codec.is_open
    assert codec.model_id == tiny_model.model_id == codec.manifest.model_id
    assert (codec.sample_rate, codec.hop_length, codec.token_rows, codec.codebook_size) == (
        tiny_model.sample_rate, tiny_model.hop_length, tiny_model.token_rows, tiny_model.codebook_size)
    assert codec.token_rate == pytest.approx(tiny_model.token_rate)
    assert codec.frame_rate == pytest.approx(tiny_model.frame_rate)


@pytest.mark.parametrize("pad", [True, False])
def test_same_shapes_and_results_as_torch_model(codec, tiny_model, speech, pad):
    audio = speech[: 22050 + 12345]
    tokens = codec.encode(audio, pad=pad)
    reference = tiny_model.encode(audio, pad=pad)
    assert tokens.dtype == np.int64 and tokens.shape == reference.shape
    # float32 round-off differs between ONNX Runtime and torch; ln() amplifies it in near-silent mel bands
    assert np.mean(tokens == reference) >= 0.99
    decoded = codec.decode(reference)
    expected = tiny_model.decode(reference)
    assert decoded.dtype == np.float32 and decoded.shape == expected.shape
    assert np.abs(decoded - expected).max() < 1e-4
    if pad:
        trimmed = codec.decode(reference, num_samples=audio.shape[-1])
        assert trimmed.shape == (1, audio.shape[-1])
        np.testing.assert_array_equal(trimmed, decoded[:, :audio.shape[-1]])


def test_reference_fixture_through_the_runtime(official_tiny_bundle, golden_io):
    """Done-means of issue 4: tokens identical to io.npz, audio within 1e-3 of audio_hat."""
    with Codec.open(official_tiny_bundle, backend="ort-cpu") as codec:
        tokens = codec.encode(golden_io["audio"], pad=False)
        np.testing.assert_array_equal(tokens, golden_io["tokens"])
        audio = codec.decode(tokens)
    assert audio.shape == golden_io["audio_hat"].shape
    assert np.abs(audio - golden_io["audio_hat"]).max() < 1e-3


def test_input_layouts_and_formats(codec, speech):
    mono = speech[:20000]
    expected = codec.encode(mono)
    np.testing.assert_array_equal(codec.encode(mono[None]), expected)
    np.testing.assert_array_equal(codec.encode(np.stack([mono, mono])[None]), expected)  # [B, C, N] mixdown
    batch = codec.encode(np.stack([mono, mono[::-1]]))
    assert batch.shape == (2,) + expected.shape[1:]
    np.testing.assert_array_equal(batch[:1], expected)
    pcm = (np.clip(mono, -1, 1) * 32767).astype(np.int16)
    assert codec.encode(pcm).shape == expected.shape
    resampled = codec.encode(mono, sample_rate=48000)
    assert resampled.shape[-1] == token_columns(padded_length(int(round(20000 * 44100 / 48000)), 256, 8), 256, 8)


def test_short_and_silent_audio(codec):
    tokens = codec.encode(np.zeros(10, np.float32))
    assert tokens.shape == (1, 12, 1)
    audio = codec.decode(tokens, num_samples=10)
    assert audio.shape == (1, 10) and np.isfinite(audio).all()
    assert codec.decode(tokens).shape == (1, decoded_length(1, 256, 8))
    padded = codec.decode(tokens, num_samples=3000)  # zero-padded at the end, by less than one column
    assert padded.shape == (1, 3000) and not padded[0, decoded_length(1, 256, 8):].any()
    with pytest.raises(TokenInputError, match="more than 1 token columns cover"):
        codec.decode(tokens, num_samples=5000)  # 1 column cannot have come from 5000 samples


def test_decode_accepts_rows_by_columns(codec):
    tokens = np.random.default_rng(0).integers(0, codec.codebook_size, (12, 5))
    np.testing.assert_array_equal(codec.decode(tokens), codec.decode(tokens[None]))


@pytest.mark.parametrize("tokens,error,match", [
    (np.zeros((1, 11, 4), np.int64), ModelMismatchError, "11 rows"),
    (np.full((1, 12, 4), 1024), CodeRangeError, "outside the codebook"),
    (np.full((1, 12, 4), -1), CodeRangeError, "outside the codebook"),
    (np.zeros((1, 12, 4), np.float32), TokenInputError, "integer"),
    (np.zeros((1, 12, 0), np.int64), TokenInputError, "empty"),
    (np.zeros((12,), np.int64), TokenInputError, "shape"),
])
def test_bad_tokens_are_refused(codec, tokens, error, match):
    with pytest.raises(error, match=match):
        codec.decode(tokens)


def test_bad_audio_and_arguments_are_refused(codec):
    with pytest.raises(AudioInputError, match="NaN"):
        codec.encode(np.array([0.0, np.nan, 0.0], np.float32))
    with pytest.raises(AudioInputError, match="no samples"):
        codec.encode(np.zeros(0, np.float32))
    with pytest.raises(AudioInputError):
        codec.encode(np.zeros((1, 1, 1, 10), np.float32))
    with pytest.raises(TokenInputError, match="num_samples"):
        codec.decode(np.zeros((1, 12, 2), np.int64), num_samples=-1)


def write_limits(bundle, **limits):
    manifest = load_manifest(bundle)
    dataclasses.replace(manifest, limits={**manifest.limits, **limits}).write(bundle)


def test_max_batch_splits_batches(bundle_copy, codec, speech):
    write_limits(bundle_copy, max_batch=2)
    batch = np.stack([np.roll(speech[:30000], 997 * i) for i in range(5)])
    with Codec.open(bundle_copy, backend="ort-cpu") as limited:
        calls = []
        original = limited._encoder.run
        limited._encoder.run = lambda feeds: calls.append(feeds["audio"].shape[0]) or original(feeds)
        progress = []
        tokens = limited.encode(batch, progress=lambda done, total: progress.append((done, total)))
        assert calls == [2, 2, 1]
        assert progress == [(1, 3), (2, 3), (3, 3)] and limited.encode_windows(30000, 5) == 3
        np.testing.assert_array_equal(tokens, codec.encode(batch))
        # ONNX Runtime's kernels round differently for other batch sizes: equal up to float32 round-off
        np.testing.assert_allclose(limited.decode(tokens), codec.decode(tokens), rtol=0, atol=1e-6)


def test_max_seconds_limits_the_window(bundle_copy, long_music):
    max_columns = token_columns(padded_length(88200, 256, 8), 256, 8)
    write_limits(bundle_copy, max_seconds=2.0, max_columns=max_columns)
    with Codec.open(bundle_copy, backend="ort-cpu", window_seconds=10.0, context_seconds=0.25) as limited:
        assert limited.window_columns == max_columns - 1  # room for pad=False input
        seen = []
        original = limited._decoder.run
        limited._decoder.run = lambda feeds: seen.append(feeds["tokens"].shape[-1]) or original(feeds)
        tokens = limited.encode(long_music[:5 * 44100], pad=False)
        limited.decode(tokens)
        assert len(seen) > 1 and max(seen) <= limited.window_columns
        audio_lengths = []
        original = limited._encoder.run
        limited._encoder.run = lambda feeds: audio_lengths.append(feeds["audio"].shape[-1]) or original(feeds)
        for length in (padded_length(88200, 256, 8), padded_length(88200, 256, 8) + 1791, 5 * 44100 + 1791):
            limited.encode(long_music[:length], pad=False)
        assert max(audio_lengths) <= padded_length(88200, 256, 8)  # the profile's max_samples
    write_limits(bundle_copy, max_columns=None)  # older manifests: from max_seconds alone
    with Codec.open(bundle_copy, backend="ort-cpu", window_seconds=10.0, context_seconds=0.25) as limited:
        assert limited.window_columns == max_columns - 1  # room for pad=False input


def test_window_arguments_are_checked(tiny_bundle):
    with pytest.raises(ValueError, match="must exceed twice the context"):
        Codec.open(tiny_bundle, backend="ort-cpu", window_seconds=2.0, context_seconds=1.0)
    with pytest.raises(ValueError):
        Codec.open(tiny_bundle, backend="ort-cpu", window_seconds=0)


# ------------------------------------------------------------------------------ concurrency
def mixed_requests(source, count, seed):
    """``count`` (kind, payload) requests: encodes of 0.05-4 s and decodes of 1-90 columns."""
    rng = np.random.default_rng(seed)
    requests = []
    for index in range(count):
        if index % 2 == 0:
            length = int(rng.integers(2000, 4 * 44100))
            start = int(rng.integers(0, source.shape[-1] - length))
            requests.append(("encode", source[start:start + length]))
        else:
            requests.append(("decode", rng.integers(0, 1024, (int(rng.integers(1, 3)), 12, int(rng.integers(1, 90))))))
    return requests


def serve(codec, request):
    kind, payload = request
    return codec.encode(payload) if kind == "encode" else codec.decode(payload)


def run_concurrently(codec, requests, threads):
    results = [None] * len(requests)
    errors = []

    def worker(offset):
        try:
            for index in range(offset, len(requests), threads):
                results[index] = serve(codec, requests[index])
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    workers = [threading.Thread(target=worker, args=(offset,)) for offset in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    assert not errors, errors
    return results


def test_concurrent_use_equals_serial_use(small_window_codec, long_music):
    requests = mixed_requests(long_music, 24, seed=1)
    serial = [serve(small_window_codec, request) for request in requests]
    concurrent = run_concurrently(small_window_codec, requests, threads=8)
    for expected, got in zip(serial, concurrent):
        np.testing.assert_array_equal(got, expected)
