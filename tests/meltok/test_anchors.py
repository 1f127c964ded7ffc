"""``meltok eval --anchors``: delay measurement on real audio with known delays, each classic
codec that is installed (skipped per missing tool), the mel + Griffin-Lim reference, the CLI."""
import json

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from meltok import metrics
from meltok.cli import eval_command
from meltok.evaluation.anchors import (CLASSIC_CODECS, ToolCodec, measure_delay, mel_griffin_lim_coder,
                                       mel_inversion_coder, run_anchors, tool_coder, undo_delay)

NOMINAL_KBPS = {"opus 6 kbps": 6.0, "opus 12 kbps": 12.0, "mp3 16 kbps": 16.0}


@pytest.mark.parametrize("delay", [1234, -321, 0, 4000])
def test_measure_delay_finds_a_known_delay_on_real_audio(real_clips, delay):
    clip = real_clips["speech"][:2 * 44100]
    delayed = np.concatenate([np.zeros(delay, np.float32), clip]) if delay >= 0 else clip[-delay:]
    noisy = delayed + 0.05 * np.random.default_rng(0).standard_normal(delayed.size).astype(np.float32)
    assert measure_delay(clip, noisy, max_lag=4410) == delay
    aligned = undo_delay(noisy, delay, clip.size)
    assert aligned.size == clip.size and measure_delay(clip, aligned, max_lag=4410) == 0
    if delay > 0:
        assert metrics.mel_distance(clip, aligned) < metrics.mel_distance(clip, noisy[:clip.size])


@pytest.mark.parametrize("codec", CLASSIC_CODECS, ids=[c.name for c in CLASSIC_CODECS])
def test_classic_codec_round_trip_is_aligned_with_its_bitrate(real_clips, codec):
    if codec.missing_tools():
        pytest.skip(f"{' and '.join(codec.missing_tools())} not installed")
    clip = real_clips["music"][:3 * 44100]
    delays = []
    coded = tool_coder(codec, delays)(clip)
    kbps = coded.bits / 3.0 / 1000
    nominal = NOMINAL_KBPS.get(codec.name)
    assert (0.7 * nominal < kbps < 1.5 * nominal) if nominal else (10.0 < kbps < 80.0), kbps
    assert coded.audio.shape == clip.shape and len(delays) == 1
    assert measure_delay(clip, coded.audio, max_lag=4410) == 0  # aligned to the sample
    assert abs(metrics.level_difference_db(clip, coded.audio)) < 4.0
    assert abs(metrics.frame_rate_buzz(clip, coded.audio)) < 3.0  # classic codecs do not buzz at 172 Hz


def test_missing_tool_is_skipped_with_a_note(tmp_path, real_clips):
    (tmp_path / "music").mkdir()
    sf.write(tmp_path / "music" / "a.flac", real_clips["music"][:22050], 44100)
    fake = ToolCodec("fake codec", ".x", ("meltok-no-such-encoder", "{input}", "{output}"),
                     ("meltok-no-such-decoder", "{input}", "{output}"))
    [result] = run_anchors(tmp_path, codecs=(fake,), griffin_lim=False, use_visqol=False)
    assert result.report is None and "meltok-no-such-decoder and meltok-no-such-encoder not found" in result.note


def test_mel_griffin_lim_reference_is_close_but_not_exact(real_clips):
    clip = real_clips["speech"][:44100]
    estimate = mel_griffin_lim_coder(iterations=16)(clip).audio
    assert estimate.shape == clip.shape
    distance = metrics.mel_distance(clip, estimate)
    assert 0.3 < distance < 3.0  # the envelope is right, the phase is not the input's
    assert abs(metrics.level_difference_db(clip, estimate)) < 3.0


def test_mel_inversion_reference_keeps_a_tone_where_griffin_lim_loses_it(real_clips):
    """The true mel through the runtime's MelInverter: a 1 kHz tone at its frequency and level, which 64
    iterations of Griffin-Lim from random phase do not keep; speech keeps its envelope and level."""
    from meltok.evaluation import tones

    tone = tones.tone(1000.0)
    kept = tones.tone_accuracy(tone, mel_inversion_coder()(tone).audio, 1000.0)
    lost = tones.tone_accuracy(tone, mel_griffin_lim_coder()(tone).audio, 1000.0)
    assert tones.kept(kept) and kept["level_db"] > lost["level_db"] + 6
    clip = real_clips["speech"][:44100]
    estimate = mel_inversion_coder()(clip).audio
    assert estimate.shape == clip.shape
    assert 0.3 < metrics.mel_distance(clip, estimate) < 3.0
    assert abs(metrics.level_difference_db(clip, estimate)) < 3.0


def test_cli_anchors_table_and_file(tmp_path, real_clips):
    for category in ("music", "speech"):
        (tmp_path / "clips" / category).mkdir(parents=True)
        sf.write(tmp_path / "clips" / category / "a.flac", real_clips[category][:44100], 44100)
    from meltok.default_model import default_model_path

    result = CliRunner().invoke(eval_command, [str(default_model_path()), str(tmp_path / "clips"), "--anchors",
                                               "--no-visqol", "--no-tones", "--max-seconds", "0.5",
                                               "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "mel96+GL" in result.output and "delay" in result.output
    available = [c.name for c in CLASSIC_CODECS if not c.missing_tools()]
    for name in available:
        assert name in result.output
    written = result.output.strip().splitlines()[-1]
    assert written == f"wrote {tmp_path / 'r.json'}, {tmp_path / 'r.csv'}, {tmp_path / 'r-anchors.json'}"
    data = json.loads((tmp_path / "r-anchors.json").read_text())
    assert set(data["anchors"]) == {c.name for c in CLASSIC_CODECS} | {"mel96+GL", "mel96+inversion"}
    assert data["anchors"]["mel96+GL"]["report"]["summary"]["all"]["clips"] == 2
