"""One codec pipeline behind both front ends: ``meltok.MelTok`` (torch) and ``meltok_runtime.Codec``
(ONNX Runtime) refuse the same bad input with the same typed error, read ``soundfile``'s
``[frames, channels]`` layout only when told, and decode at a requested sample rate."""
import numpy as np
import pytest
import soundfile as sf

from meltok_runtime import Codec
from meltok_runtime.errors import (AudioInputError, CodeRangeError, ModelMismatchError, SettingsError,
                                   TokenInputError)
from meltok_runtime.lengths import decoded_length
from meltok_runtime.pipeline import AudioCodec, CodecPipeline

from .conftest import DATA

FRONT_ENDS = ["MelTok", "Codec"]


@pytest.fixture(params=FRONT_ENDS)
def front_end(request, tiny_model, codec):
    return tiny_model if request.param == "MelTok" else codec


def with_windows(front_end, bundle, method: str, data, window_seconds, context_seconds):
    """``front_end.encode(data)`` or ``.decode(data)`` with these window settings: per call for MelTok,
    at open for Codec."""
    if isinstance(front_end, Codec):
        with Codec.open(bundle, backend="ort-cpu", window_seconds=window_seconds,
                        context_seconds=context_seconds) as opened:
            return getattr(opened, method)(data)
    return getattr(front_end, method)(data, window_seconds=window_seconds, context_seconds=context_seconds)


def test_both_front_ends_are_codecs(tiny_model, codec):
    for front_end in (tiny_model, codec):
        assert isinstance(front_end, AudioCodec) and isinstance(front_end, CodecPipeline)
        assert (front_end.sample_rate, front_end.hop_length, front_end.token_rows) == (44100, 256, 12)
    assert codec.token_rate == pytest.approx(tiny_model.token_rate) and codec.model_id == tiny_model.model_id


TOKENS = np.random.default_rng(1).integers(0, 1024, (1, 12, 4))


@pytest.mark.parametrize("case,error,match", [
    (lambda c: c.decode(TOKENS, num_samples=-5), TokenInputError, "num_samples"),
    (lambda c: c.decode(TOKENS, num_samples=2.5), TokenInputError, "num_samples"),
    (lambda c: c.decode(TOKENS, num_samples=True), TokenInputError, "num_samples"),
    (lambda c: c.decode(TOKENS, num_samples=decoded_length(5, 256, 8) + 1), TokenInputError, "token columns cover"),
    (lambda c: c.decode(np.zeros((1, 11, 4), np.int64)), ModelMismatchError, "11 rows"),
    (lambda c: c.decode(np.full((1, 12, 4), 1024)), CodeRangeError, "outside the codebook"),
    (lambda c: c.decode(np.zeros((1, 12, 4), np.float32)), TokenInputError, "integer"),
    (lambda c: c.decode(TOKENS, sample_rate=0), SettingsError, "sample_rate"),
    (lambda c: c.encode(np.array([0.0, np.nan, 0.0], np.float32)), AudioInputError, "NaN"),
    (lambda c: c.encode(np.zeros(0, np.float32)), AudioInputError, "no samples"),
    (lambda c: c.encode(np.zeros((44100, 2), np.float32)), AudioInputError, "channels_last=True"),
], ids=["negative-num-samples", "fractional-num-samples", "bool-num-samples", "num-samples-beyond-tokens",
        "wrong-rows", "out-of-range", "float-tokens", "bad-output-rate", "nan-audio", "empty-audio", "frames-by-channels"])
def test_same_bad_input_same_error(front_end, case, error, match):
    with pytest.raises(error, match=match):
        case(front_end)


@pytest.mark.parametrize("seconds", [0.7, 2.7])
def test_window_not_longer_than_twice_its_context_is_refused_whatever_the_length(front_end, tiny_bundle,
                                                                                real_clips, seconds):
    with pytest.raises(SettingsError, match="must exceed twice the context"):
        with_windows(front_end, tiny_bundle, "encode", real_clips["speech"][:int(seconds * 44100)], 1.0, 1.0)


def test_window_too_short_for_decoding_is_refused_up_front(front_end, tiny_bundle):
    tokens = np.random.default_rng(2).integers(0, 1024, (1, 12, 10))
    with pytest.raises(SettingsError, match="at least 3 columns"):
        with_windows(front_end, tiny_bundle, "decode", tokens, 0.1, 0.0)
    # three columns (0.14 s) is the shortest window that works
    assert with_windows(front_end, tiny_bundle, "decode", tokens, 0.14, 0.0).shape == (1, decoded_length(10, 256, 8))


@pytest.fixture(scope="module")
def stereo_file(tmp_path_factory, real_clips):
    """A real stereo file: music left, speech right (from tests/data), 1.5 s at 44.1 kHz."""
    path = tmp_path_factory.mktemp("stereo") / "stereo.wav"
    length = int(1.5 * 44100)
    sf.write(path, np.stack([real_clips["music"][:length], real_clips["speech"][:length]], axis=1), 44100,
             subtype="FLOAT")
    return path


def test_soundfile_layout_is_refused_with_the_fix_or_read_when_told(front_end, stereo_file):
    frames, rate = sf.read(stereo_file, dtype="float32", always_2d=True)  # [frames, channels]
    assert frames.shape == (int(1.5 * 44100), 2)
    with pytest.raises(AudioInputError, match=r"audio\.T\[None\]"):
        front_end.encode(frames, rate)
    tokens = front_end.encode(frames, rate, channels_last=True)
    np.testing.assert_array_equal(tokens, front_end.encode(frames.T[None], rate))  # one item, channels mixed
    assert tokens.shape[0] == 1
    left = frames[:, :1]  # [frames, 1]: a mono file read with always_2d=True
    with pytest.raises(AudioInputError, match="channels_last=True"):
        front_end.encode(left, rate)
    np.testing.assert_array_equal(front_end.encode(left, rate, channels_last=True), front_end.encode(left[:, 0], rate))


def test_decode_at_a_requested_sample_rate(front_end):
    frames, rate = sf.read(DATA / "music48k.flac", dtype="float32", always_2d=True)
    audio = frames[:3 * 48000].mean(axis=1)
    tokens = front_end.encode(audio, 48000)
    at_48k = front_end.decode(tokens, num_samples=audio.shape[-1], sample_rate=48000)
    assert at_48k.shape == (1, 3 * 48000)  # 3.000 s at 48 kHz
    # the same signal as at the model's rate, resampled (not the 44.1 kHz samples relabelled): compared
    # below 16 kHz, since the round trip through 48 kHz filters the band near 22.05 kHz
    at_model_rate = front_end.decode(tokens, num_samples=3 * 44100)[0]
    back = front_end.prepare(at_48k, 48000)[0]
    spectra = [np.fft.rfft(signal[4410:-4410] * np.hanning(3 * 44100 - 8820)) for signal in (at_model_rate, back)]
    band = slice(1, int(16000 / 44100 * (3 * 44100 - 8820)))
    error = spectra[1][band] - spectra[0][band]
    snr = 10 * np.log10(np.sum(np.abs(spectra[0][band]) ** 2) / np.sum(np.abs(error) ** 2))
    assert snr > 60, snr  # measured: 99 dB here; relabelled 44.1 kHz samples give about -3 dB
