"""One way from an audio file to model audio, one list of audio suffixes and one Hann window, shared by the
runtime, training's corpus and export's verification clips."""
import ast
from pathlib import Path

import numpy as np
import soundfile as sf

from meltok_runtime.io.audio import load_audio, load_mono, prepare_audio

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("meltok", "export", "runtime")


def _sources():
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def test_corpus_and_dataset_scans_find_the_same_audio_files(tmp_path, real_clip_paths):
    """Both scans take the runtime's one suffix list: a Sun AU and a Sony Wave64 file (suffixes only the dataset
    side knew before) are picked up by the training corpus too."""
    from meltok.train.corpus.sources import scan
    from meltok_runtime.dataset.sources import collect_items

    audio, rate = sf.read(real_clip_paths["speech"], frames=44100, dtype="float32")
    folder = tmp_path / "clips"
    folder.mkdir()
    sf.write(folder / "a.wav", audio, rate)
    sf.write(folder / "b.au", audio * 0.5, rate)
    sf.write(folder / "c.w64", audio * 0.25, rate)
    (folder / "notes.txt").write_text("not audio\n")
    corpus = sorted(Path(item["audio"]).name for item in scan([folder], tmp_path / "tmp", 0, None))
    dataset = sorted(Path(item.path).name for item in collect_items([folder])[0])
    assert corpus == dataset == ["a.wav", "b.au", "c.w64"]


def test_no_other_audio_suffix_list_or_hann_window():
    """No module but ``runtime/io/formats.py`` spells an input suffix list (a literal holding ".flac" and ".mp3"),
    and no module computes a Hann window of its own (numpy's ``hanning`` or the cosine formula) but
    ``runtime/melfilters.py``; torch modules call ``torch.hann_window``, which the runtime's reproduces."""
    suffix_lists, windows = [], []
    for path in _sources():
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.Set, ast.Tuple, ast.List)):
                strings = {elt.value for elt in node.elts if isinstance(elt, ast.Constant)}
                if {".flac", ".mp3"} <= strings and path != ROOT / "runtime" / "io" / "formats.py":
                    suffix_lists.append(f"{path.relative_to(ROOT)}:{node.lineno}")
        if path != ROOT / "runtime" / "melfilters.py" and ("hanning(" in text or "cos(2.0 * np.pi" in text):
            windows.append(str(path.relative_to(ROOT)))
    assert suffix_lists == [] and windows == []


def test_load_mono_reads_mixes_down_and_resamples_like_the_codec(real_clip_paths):
    """``load_mono`` is ``load_audio`` + ``prepare_audio`` (what ``meltok-rt encode`` does), here on a 48 kHz clip."""
    samples, rate = load_audio(real_clip_paths["music48k"])
    expected, resampled = prepare_audio(samples[None], rate, 44100)
    loaded = load_mono(real_clip_paths["music48k"], 44100)
    assert resampled and rate == 48000 and loaded.source_rate == 48000
    assert loaded.channels == samples.shape[0] and loaded.source_samples == samples.shape[1]
    np.testing.assert_array_equal(loaded.samples, expected[0])
    assert loaded.samples.dtype == np.float32 and abs(loaded.samples.size - samples.shape[1] * 44100 / 48000) < 2


def test_corpus_and_export_clips_come_through_load_mono(real_clip_paths):
    """Training's corpus decodes and export's verification clip loads through the same ``load_mono``."""
    from meltok.train.corpus.sources import _decode
    from meltok_export.contract import VERIFY_AUDIO, verify_audio

    info, pcm, error = _decode(str(real_clip_paths["music48k"]))
    mono = load_mono(real_clip_paths["music48k"], 44100).samples
    assert error is None and info["sample_rate"] == 48000
    peak = max(1.0, float(np.abs(mono).max()))
    np.testing.assert_array_equal(pcm, np.clip(np.round(mono / peak * 32767.0), -32768, 32767).astype(np.int16))
    np.testing.assert_array_equal(verify_audio(22050), load_mono(ROOT / "export" / VERIFY_AUDIO, 22050).samples)
