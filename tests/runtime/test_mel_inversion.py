"""The classic log-mel decoder: tones keep their pitch, real audio keeps its mel, and the running phase
carried from piece to piece is the running phase of one call."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from meltok_runtime.melfilters import hann_window
from meltok_runtime.mel_inversion import MelInverter

DATA = Path(__file__).resolve().parents[1] / "data"
RATE = 44100


@pytest.fixture(scope="module")
def inverter():
    return MelInverter()


def log_mel(inverter: MelInverter, audio: np.ndarray) -> np.ndarray:
    """The front end's log-mel ``[1, 96, N // 256 + 1]`` in numpy (centred frames, reflect padding)."""
    padded = np.pad(audio.astype(np.float64), inverter.n_fft // 2, mode="reflect")
    count = audio.size // inverter.hop + 1
    index = np.arange(inverter.n_fft)[None, :] + inverter.hop * np.arange(count)[:, None]
    magnitude = np.abs(np.fft.rfft(padded[index] * hann_window(inverter.n_fft), axis=1)).T
    return np.log(np.maximum(inverter.filters @ magnitude, inverter.log_floor))[None]


def line(audio: np.ndarray, frequency: float) -> tuple[float, float]:
    """(power within 1 Hz of ``frequency`` in dB re a -6 dBFS sine's, the strongest line in Hz) of the middle 3 s."""
    steady = audio[RATE // 2:RATE // 2 + 3 * RATE] * np.hanning(3 * RATE)
    power = np.abs(np.fft.rfft(steady)) ** 2
    hz = np.fft.rfftfreq(steady.size, 1 / RATE)
    reference = np.abs(np.fft.rfft(0.5 * np.sin(2 * np.pi * frequency * np.arange(3 * RATE) / RATE)
                                   * np.hanning(3 * RATE))) ** 2
    near = np.abs(hz - frequency) <= 1.0
    return 10 * np.log10(power[near].sum() / reference[near].sum()), hz[np.argmax(power * (hz > 20))]


@pytest.mark.parametrize("frequency", [110.0, 300.0, 1000.0, 2637.0, 4000.0])
def test_a_tone_comes_back_at_its_pitch_and_level(inverter, frequency):
    tone = 0.5 * np.sin(2 * np.pi * frequency * np.arange(4 * RATE) / RATE)
    audio, _ = inverter(log_mel(inverter, tone))
    level, strongest = line(audio[0], frequency)
    assert abs(strongest / frequency - 1) < 0.002
    assert level > -6.0  # the project's target: within 1%, at most 6 dB below the input


def test_real_music_keeps_its_mel_without_a_comb(inverter):
    audio, rate = sf.read(DATA / "music.flac", dtype="float32")
    assert rate == RATE
    music = audio.mean(axis=1)[:4 * RATE]
    mel = log_mel(inverter, music)
    decoded, _ = inverter(mel)
    loud = mel > mel.max() - np.log(1e4)  # bands within 80 dB of the loudest
    error = np.abs(log_mel(inverter, decoded[0]) - mel)[loud].mean()
    assert error < 0.3  # natural-log units: within about 2.6 dB on average
    without, _ = MelInverter(consistency_iterations=0)(mel)  # the peak-locked phase alone
    assert np.abs(log_mel(inverter, without[0]) - mel)[loud].mean() > error + 0.05
    spectrum = lambda x: np.abs(np.fft.rfft(x[:3 * RATE] * np.hanning(3 * RATE))) ** 2
    hz = np.fft.rfftfreq(3 * RATE, 1 / RATE)
    comb = np.abs((hz / (RATE / 512)) - np.round(hz / (RATE / 512))) * (RATE / 512) < 1.0
    band = (hz > 100) & (hz < 8000)
    ratio = spectrum(decoded[0])[comb & band].sum() / spectrum(music)[comb & band].sum()
    rest = spectrum(decoded[0])[~comb & band].sum() / spectrum(music)[~comb & band].sum()
    assert 10 * np.log10(ratio / rest) < 3.0  # no more energy on the 86 Hz multiples than elsewhere


def test_the_carried_running_phase_continues_exactly(inverter):
    audio, _ = sf.read(DATA / "speech.flac", dtype="float32")
    mel = log_mel(inverter, audio.mean(axis=1)[:2 * RATE])
    _, whole = inverter(mel)
    cut = 77
    _, first = inverter(mel[..., :cut])
    _, second = inverter(mel[..., cut:], first[..., -1])
    pieces = np.concatenate([first, second], axis=-1)
    difference = np.angle(np.exp(1j * (pieces - whole)))
    assert np.abs(difference).max() < 1e-9
    assert np.abs(np.angle(np.exp(1j * (second[..., 0] - whole[..., cut])))).max() < 1e-9
    _, restarted = inverter(mel[..., cut:])  # without the state: a different phase
    assert np.abs(np.angle(np.exp(1j * (restarted - whole[..., cut:])))).max() > 1.0
