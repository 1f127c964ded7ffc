import os

import numpy as np
import pytest
import soundfile as sf
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from meltok_runtime.io.audio import load_audio, mixdown, prepare_audio, write_audio
from meltok_runtime.errors import AudioInputError, OutputPathError

RATE = 44100


@pytest.fixture(scope="module")
def speech(golden_io):
    """A real utterance: float32 [44100] at 44.1 kHz, peak 0.708."""
    return golden_io["audio"][0]


def _snr_db(reference, estimate):
    return 10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / np.sum((estimate - reference) ** 2.0))


def _lowpass(signal, cutoff, rate):
    spectrum = np.fft.rfft(signal.astype(np.float64))
    spectrum[np.fft.rfftfreq(len(signal), 1 / rate) > cutoff] = 0
    return np.fft.irfft(spectrum, len(signal))


@pytest.mark.parametrize("suffix,fmt,subtype,atol", [
    (".wav", "WAV", "PCM_U8", 1 / 128), (".wav", "WAV", "PCM_16", 1 / 2 ** 15), (".wav", "WAV", "PCM_24", 1 / 2 ** 23),
    (".wav", "WAV", "PCM_32", 1e-7), (".wav", "WAV", "FLOAT", 0), (".flac", "FLAC", "PCM_16", 1 / 2 ** 15),
    (".flac", "FLAC", "PCM_24", 1 / 2 ** 23), (".aiff", "AIFF", "PCM_16", 1 / 2 ** 15)])
def test_load_lossless_files(tmp_path, speech, suffix, fmt, subtype, atol):
    path = tmp_path / f"speech{suffix}"
    sf.write(path, speech, RATE, format=fmt, subtype=subtype)
    audio, rate = load_audio(path)
    assert rate == RATE and audio.dtype == np.float32 and audio.shape == (1, len(speech))
    np.testing.assert_allclose(audio[0], speech, rtol=0, atol=atol)


def test_load_ogg_vorbis(tmp_path, speech):
    path = tmp_path / "speech.ogg"
    sf.write(path, speech, RATE, format="OGG", subtype="VORBIS")
    audio, rate = load_audio(path)
    assert rate == RATE and audio.shape == (1, len(speech))
    assert np.corrcoef(audio[0], speech)[0, 1] > 0.95


def test_load_stereo_and_mixdown(tmp_path, speech):
    stereo = np.stack([speech, -0.5 * speech])
    sf.write(tmp_path / "stereo.wav", stereo.T, RATE, subtype="FLOAT")
    audio, _ = load_audio(tmp_path / "stereo.wav")
    np.testing.assert_array_equal(audio, stereo)
    np.testing.assert_allclose(mixdown(audio), 0.25 * speech, atol=1e-7)
    np.testing.assert_array_equal(mixdown(speech), speech)
    batch, resampled = prepare_audio(audio[None], RATE)
    assert not resampled and batch.shape == (1, len(speech))
    np.testing.assert_allclose(batch[0], 0.25 * speech, atol=1e-7)


@pytest.mark.parametrize("file_rate", [48000, 22050])
def test_other_rates_are_resampled(tmp_path, speech, file_rate):
    path = tmp_path / f"speech_{file_rate}.wav"
    sf.write(path, soxr.resample(speech, RATE, file_rate, quality="VHQ"), file_rate, subtype="FLOAT")
    audio, rate = load_audio(path)
    assert rate == file_rate
    batch, resampled = prepare_audio(audio[0], rate)
    assert resampled and batch.dtype == np.float32 and batch.shape == (1, len(speech))
    band = 0.43 * min(file_rate, RATE)  # inside both anti-alias passbands
    error = _lowpass(batch[0], band, RATE) - _lowpass(speech, band, RATE)
    assert np.abs(error[2000:-2000]).max() < 1e-3


def test_resampling_round_trip_accuracy(speech):
    up, flag_up = prepare_audio(speech, RATE, target_rate=48000)
    back, flag_back = prepare_audio(up, 48000)
    assert flag_up and flag_back and up.shape == (1, 48000) and back.shape == (1, RATE)
    # Full band: only the 20-22 kHz noise floor, outside soxr's passband, is lost (46.9 dB measured).
    assert _snr_db(speech, back[0]) > 40
    # Below 19 kHz the round trip is transparent (2.7e-6 measured away from the edges).
    error = _lowpass(back[0], 19000, RATE) - _lowpass(speech, 19000, RATE)
    assert np.abs(error[1000:-1000]).max() < 2e-5


def test_resampled_sine_matches_analytic():
    tone = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(RATE) / RATE)
    out, _ = prepare_audio(tone.astype(np.float32), RATE, target_rate=48000)
    expected = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(out.shape[1]) / 48000)
    assert np.abs(out[0] - expected)[500:-500].max() < 2e-6


def test_batch_resampling_equals_one_by_one(speech):
    batch = np.stack([speech, speech[::-1], 0.1 * speech])
    out, _ = prepare_audio(batch, RATE, target_rate=16000)
    for item, signal in zip(out, batch):
        np.testing.assert_array_equal(item, prepare_audio(signal, RATE, target_rate=16000)[0][0])


@pytest.mark.parametrize("dtype,values,expected", [
    (np.int16, [-32768, 0, 16384, 32767], [-1.0, 0.0, 0.5, 32767 / 32768]),
    (np.int32, [-2 ** 31, 2 ** 30], [-1.0, 0.5]),
    (np.int8, [-128, 64], [-1.0, 0.5]),
    (np.uint8, [0, 128, 192], [-1.0, 0.0, 0.5]),
    (np.float64, [0.25, -2.0], [0.25, -2.0]),
    (np.float16, [0.5], [0.5])])
def test_pcm_scaling(dtype, values, expected):
    out, resampled = prepare_audio(np.array(values, dtype=dtype), 48000.0, target_rate=48000)
    assert not resampled and out.dtype == np.float32 and out.shape == (1, len(values))
    np.testing.assert_array_equal(out[0], np.array(expected, np.float32))


def test_shapes():
    assert prepare_audio(np.zeros(10, np.float32), RATE)[0].shape == (1, 10)
    assert prepare_audio(np.zeros((3, 10), np.float32), RATE)[0].shape == (3, 10)
    out, _ = prepare_audio(np.stack([np.ones((2, 10)), np.zeros((2, 10))]).astype(np.float32), RATE)
    assert out.shape == (2, 10) and out[0, 0] == 1.0 and out[1, 0] == 0.0


@pytest.mark.parametrize("audio,match", [
    (np.array([0.0, np.nan, 0.1, np.inf], np.float32), r"2 NaN or infinite samples.*index \(1,\)"),
    (np.array([[0.0, 1e300]]), r"1 NaN or infinite.*float32 range.*index \(0, 1\)"),
    (np.zeros(0, np.float32), "no samples"), (np.zeros((2, 0), np.float32), "no samples"),
    (np.zeros((0, 5), np.float32), "no samples"), (np.float32(0.5), "shape"),
    (np.zeros((1, 1, 1, 4), np.float32), "shape"), (np.zeros(4, np.int64), "dtype int64"),
    (np.zeros(4, bool), "dtype bool"), (np.zeros(4, np.complex64), "dtype complex64"),
    (np.array(["a", "b"]), "dtype"), (np.array([None, 1.0], dtype=object), "dtype object"),
    ([[0.0, 1.0], [0.0]], "cannot be read as an array")])
def test_prepare_rejects_bad_audio(audio, match):
    with pytest.raises(AudioInputError, match=match):
        prepare_audio(audio, RATE)


@pytest.mark.parametrize("rate", [0, -44100, 44100.5, True, None, "44100", float("nan"), float("inf")])
def test_prepare_rejects_bad_rates(rate):
    with pytest.raises(AudioInputError, match="positive whole number"):
        prepare_audio(np.zeros(10, np.float32), rate)
    with pytest.raises(AudioInputError, match="target_rate"):
        prepare_audio(np.zeros(10, np.float32), RATE, target_rate=rate)


def test_prepare_rejects_signal_shorter_than_one_output_sample():
    with pytest.raises(AudioInputError, match="shorter than one sample"):
        prepare_audio(np.zeros(1, np.float32), 48000, target_rate=22050)


_DTYPES = st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8,
                           np.uint16, np.bool_, np.complex64])


@settings(max_examples=200, deadline=None)
@given(audio=_DTYPES.flatmap(lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0,
                                                                               max_side=6))),
       rate=st.sampled_from([44100, 48000, 22050.0, 8000, 0, -1, 44100.5]))
def test_prepare_property(audio, rate):
    try:
        out, resampled = prepare_audio(audio, rate)
    except AudioInputError:
        return
    assert out.dtype == np.float32 and out.ndim == 2 and out.shape[1] >= 1
    assert out.shape[0] == (1 if audio.ndim == 1 else audio.shape[0])
    assert np.isfinite(out).all() and resampled == (rate != RATE)


@pytest.mark.parametrize("name,setup", [
    ("missing.wav", None), ("folder", "dir"), ("empty.wav", b""), ("notes.wav", b"these are not audio samples\n"),
    ("silence.wav", "zero-frames")])
def test_load_refusals(tmp_path, name, setup):
    path = tmp_path / name
    if setup == "dir":
        path.mkdir()
    elif setup == "zero-frames":
        sf.write(path, np.zeros((0, 1), np.float32), RATE)
    elif setup is not None:
        path.write_bytes(setup)
    with pytest.raises(AudioInputError) as info:
        load_audio(path)
    message = str(info.value)
    assert name in message and "\n" not in message
    if name == "notes.wav":
        assert "WAV" in message and "FLAC" in message


@pytest.mark.parametrize("suffix,atol", [(".wav", 0), (".flac", 2 ** -23), (".ogg", None)])
def test_write_round_trip(tmp_path, speech, suffix, atol):
    stereo = np.stack([speech, 0.5 * speech])
    path = tmp_path / f"out{suffix.upper()}"
    write_audio(path, stereo, RATE)
    audio, rate = load_audio(path)
    assert rate == RATE and audio.shape == stereo.shape
    if atol is None:
        assert np.corrcoef(audio[0], speech)[0, 1] > 0.95
    else:
        np.testing.assert_allclose(audio, stereo, rtol=0, atol=atol)
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_write_wav_keeps_values_beyond_full_scale_flac_clips(tmp_path):
    loud = np.array([0.0, 1.5, -2.0, 0.25], np.float32)
    write_audio(tmp_path / "loud.wav", loud, RATE)
    np.testing.assert_array_equal(load_audio(tmp_path / "loud.wav")[0][0], loud)
    write_audio(tmp_path / "loud.flac", loud, RATE)
    np.testing.assert_allclose(load_audio(tmp_path / "loud.flac")[0][0], [0.0, 1.0, -1.0, 0.25], atol=2 ** -23)


@pytest.mark.parametrize("name,audio,error,match", [
    ("out.mp3", np.zeros(10, np.float32), OutputPathError, "suffix '.mp3'"),
    ("out", np.zeros(10, np.float32), OutputPathError, "suffix ''"),
    ("out.wav", np.zeros((44100, 2), np.float32), AudioInputError, "transpose"),
    ("out.wav", np.zeros((1, 1, 10), np.float32), AudioInputError, "expected float32"),
    ("out.wav", np.zeros(10, np.int16), AudioInputError, "expected float32"),
    ("out.wav", np.array([0.0, np.nan], np.float32), AudioInputError, "NaN"),
    ("missing/out.wav", np.zeros(10, np.float32), OutputPathError, "does not exist")])
def test_write_refusals(tmp_path, name, audio, error, match):
    with pytest.raises(error, match=match):
        write_audio(tmp_path / name, audio, RATE)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("suffix, writer", [(".wav", "_write_float_wav"), (".flac", "sf.write")])
def test_interrupted_write_keeps_previous_file(tmp_path, monkeypatch, speech, suffix, writer):
    from meltok_runtime.io import audio as audio_module

    path = tmp_path / f"out{suffix}"
    write_audio(path, speech, RATE)
    before = path.read_bytes()
    owner, name = (sf, "write") if writer == "sf.write" else (audio_module, writer)
    real_write = getattr(owner, name)

    def write_then_fail(file, data, *args, **kwargs):
        real_write(file, data[: len(data) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(owner, name, write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        write_audio(path, np.zeros(1000, np.float32), RATE)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]
