"""Tone, comb, peak-level and pitch metrics on codecs whose answers are known: identity, a gain, a pitch
shift, a codec that moves every frequency onto the 86.1 Hz grid and one that makes its output periodic."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from meltok import metrics
from meltok.cli import eval_command
from meltok.evaluation import tones
from meltok.evaluation.pitch import pitch_metrics
from meltok.evaluation.report import check_targets
from meltok.evaluation.run import Coded

SHIPPED_BUNDLE = Path(__file__).resolve().parents[2] / "runtime" / "models" / "default"
GRID_HZ = 44100 / 512
SHIFT = 1.06  # +100.9 cents, +6%


def identity(x):
    return Coded(x.copy())


def gain_10db(x):
    return Coded((x * 10 ** (-10 / 20)).astype(np.float32))


def shift_pitch(x, ratio=SHIFT):
    """Every frequency times ``ratio`` (resampled, played at the original rate), zero-padded to the input length."""
    import soxr

    y = soxr.resample(x, 44100 * ratio, 44100)
    return Coded(np.pad(y, (0, max(0, x.size - y.size)))[:x.size].astype(np.float32))


def onto_grid(x):
    """Every FFT bin's content moved to the nearest multiple of 86.1 Hz (one FFT over the whole signal)."""
    spectrum = np.fft.rfft(x.astype(np.float64))
    freqs = np.fft.rfftfreq(x.size, 1 / 44100)
    target = np.round(np.round(freqs / GRID_HZ) * GRID_HZ / (44100 / x.size)).astype(int)
    moved = np.zeros_like(spectrum)
    np.add.at(moved, np.minimum(target, spectrum.size - 1), spectrum)
    return Coded(np.fft.irfft(moved, x.size).astype(np.float32))


def periodic_512(x):
    """The 512 samples at the middle of the input, repeated over its whole length: periodic at 512."""
    middle = x[x.size // 2:x.size // 2 + 512]
    return Coded(np.resize(middle, x.size).astype(np.float32))


@pytest.fixture(scope="module")
def suites():
    return {name: tones.tone_suite(code) for name, code in
            (("identity", identity), ("gain", gain_10db), ("shift", shift_pitch), ("grid", onto_grid),
             ("periodic", periodic_512))}


def _partials(suite):
    return suite["tones"] + [p for ps in suite["chords"].values() for p in ps]


def test_identity_keeps_every_tone(suites):
    suite = suites["identity"]
    for partial in _partials(suite):
        assert partial["level_db"] == pytest.approx(0.0, abs=1e-6)
        assert partial["error_percent"] == pytest.approx(0.0, abs=0.01)
        assert tones.kept(partial)
    for tone in suite["tones"]:
        assert tone["comb86_db"] == tone["comb86_p90_db"] == 0.0
        assert tone["autocorr_512"] == pytest.approx(math.cos(2 * math.pi * tone["hz"] * 512 / 44100), abs=0.02)
    assert suite["sweep"]["level_db"] == pytest.approx(0.0, abs=1e-6) and suite["sweep"]["within_percent"] == 1.0
    assert suite["sweep"]["segments"] > 150
    assert all(check["passed"] for check in check_targets([], suite)[:3])


def test_gain_reads_as_its_level(suites, real_clips):
    suite = suites["gain"]
    for partial in _partials(suite):
        assert partial["level_db"] == pytest.approx(-10.0, abs=0.01)
        assert partial["error_percent"] == pytest.approx(0.0, abs=0.01)
        assert not tones.kept(partial)  # more than 6 dB lost
    assert suite["sweep"]["level_db"] == pytest.approx(-10.0, abs=0.01)
    clip = real_clips["music"]
    assert metrics.peak_level_db(clip, gain_10db(clip).audio) == pytest.approx(-10.0, abs=0.01)
    assert metrics.peak_level_db(clip, clip) == 0.0
    assert metrics.comb_summary(clip, gain_10db(clip).audio)["comb86_db"] == pytest.approx(0.0, abs=0.01)


def test_pitch_shift_gives_its_percent(suites):
    suite = suites["shift"]
    for partial in suite["tones"]:
        assert partial["error_percent"] == pytest.approx(100 * (SHIFT - 1), abs=0.05)
        assert partial["line_hz"] == pytest.approx(partial["hz"] * SHIFT, rel=5e-4)
        assert partial["level_db"] < -30  # nothing left at the input's own frequency
    assert suite["sweep"]["within_percent"] == 0.0


def test_frequencies_on_the_86_hz_grid(suites, real_clips):
    suite = suites["grid"]
    expected = {110.0: 86.13, 300.0: 258.40, 1000.0: 1033.59, 4000.0: 3962.0}  # the nearest multiples
    for tone in suite["tones"]:
        assert tone["line_hz"] == pytest.approx(expected[tone["hz"]], abs=0.15)  # the grid codec has 0.25 Hz bins
        assert not tones.kept(tone)
    clip = real_clips["music"]
    comb = metrics.comb_summary(clip, onto_grid(clip).audio)
    assert comb["comb86_db"] > 10 and comb["comb86_odd_db"] > 10 and comb["comb86_p90_db"] > 10
    assert metrics.comb_summary(clip, clip) == {"comb86_db": 0.0, "comb86_odd_db": 0.0, "comb86_p90_db": 0.0}
    lines = metrics.comb_lines_db(clip, onto_grid(clip).audio)
    assert lines.size == int((22050 - 60) // GRID_HZ)


def test_periodic_output_and_its_comb(suites, real_clips):
    for tone in suites["periodic"]["tones"]:
        assert tone["autocorr_512"] > 0.99 and tone["autocorr_2048"] > 0.99
    clip = real_clips["music"]
    assert metrics.comb_summary(clip, periodic_512(clip).audio)["comb86_odd_db"] > 6


def test_targets_fail_where_they_should(suites):
    checks = check_targets([], suites["grid"])
    assert [c["passed"] for c in checks] == [False, False, True, None]  # no clip: no level to check
    assert "110 Hz" in checks[0]["detail"] and "(-21.6" in checks[0]["detail"]


def test_pitch_metrics_on_speech(real_clips):
    speech = real_clips["speech"]
    assert pitch_metrics(speech, speech) == {"f0_error_cents": 0.0, "voicing_agreement": 1.0}
    gained = pitch_metrics(speech, gain_10db(speech).audio)
    assert gained["f0_error_cents"] < 1.0 and gained["voicing_agreement"] > 0.95


def test_pitch_metrics_on_a_shifted_voice():
    """A steady 140 Hz harmonic voice (a resampling shift changes timing, so the f0 must be steady)."""
    voice = tones.chord([140.0 * k for k in range(1, 11)], seconds=2.0)
    shifted = pitch_metrics(voice, shift_pitch(voice).audio[:int(1.5 * 44100)])
    assert shifted["f0_error_cents"] == pytest.approx(1200 * math.log2(SHIFT), abs=5)
    assert shifted["voicing_agreement"] > 0.9


def test_eval_cli_reports_tones_comb_and_pitch_for_the_shipped_bundle(real_clips, tmp_path):
    clips = tmp_path / "clips"
    for category, seconds in (("music", 2.0), ("speech", 2.5)):
        (clips / category).mkdir(parents=True)
        sf.write(clips / category / "clip.flac", real_clips[category][:int(seconds * 44100)], 44100)
    result = CliRunner().invoke(eval_command, [str(SHIPPED_BUNDLE), str(clips), "-o", str(tmp_path / "r"),
                                               "--no-visqol"])
    assert result.exit_code == 0, result.output
    assert "tones within 1% at no more than 6 dB below the input" in result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert [t["hz"] for t in data["tones"]["tones"]] == list(tones.TONES_HZ)
    assert set(data["tones"]["tones"][0]) >= {"level_db", "line_hz", "error_percent", "autocorr_512",
                                              "autocorr_2048", "comb86_db", "comb86_p90_db"}
    assert set(data["tones"]["sweep"]) == {"level_db", "within_percent", "segments"}
    assert list(data["tones"]["chords"]) == list(tones.CHORDS)
    assert len(data["targets"]) == 4 and all(t["passed"] in (True, False) for t in data["targets"])
    for clip in data["clips"]:
        for field in ("comb86_db", "comb86_odd_db", "comb86_p90_db", "peak_level_db", "f0_error_cents",
                      "voicing_agreement", "buzz_db"):
            assert isinstance(clip[field], float), (clip["path"], field)
    assert "comb86_db" in data["definitions"] and "tones" in data["definitions"]
