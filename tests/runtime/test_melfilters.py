import math
import subprocess
import sys

import numpy as np
import pytest

from meltok_runtime.melfilters import hann_window, mel_filterbank


@pytest.fixture(scope="module")
def official_buffers(official_tiny_dir):
    torch = pytest.importorskip("torch")
    state = torch.load(official_tiny_dir / "stage2.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return {key: value.numpy() for key, value in state.items() if "mel_spec" in key or "window" in key}


def _torchaudio_fbanks(torch, n_freqs, f_min, f_max, n_mels, sample_rate):
    """torchaudio.functional.melscale_fbanks(norm=None, mel_scale="htk"), line by line."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    m_min = 2595.0 * math.log10(1.0 + f_min / 700.0)
    m_max = 2595.0 * math.log10(1.0 + f_max / 700.0)
    f_pts = 700.0 * (10.0 ** (torch.linspace(m_min, m_max, n_mels + 2) / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    down = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.max(torch.zeros(1), torch.min(down, up)).numpy()


def test_filterbank_equals_official_buffer(official_buffers):
    fb = mel_filterbank()
    assert fb.shape == (513, 96) and fb.dtype == np.float32
    np.testing.assert_array_equal(fb, official_buffers["feature_extractor.mel_spec.mel_scale.fb"])


def test_filterbank_100_bands_equals_official_loss_buffer(official_buffers):
    np.testing.assert_array_equal(mel_filterbank(n_mels=100),
                                  official_buffers["melspec_loss.mel_spec.mel_scale.fb"])


def test_window_matches_official_buffer(official_buffers):
    window = hann_window(1024)
    assert window.shape == (1024,) and window.dtype == np.float32
    for key in ("feature_extractor.mel_spec.spectrogram.window", "head.istft.window"):
        np.testing.assert_allclose(window, official_buffers[key], rtol=0, atol=6e-8)


@pytest.mark.parametrize("n_freqs,n_mels,sample_rate,f_min,f_max", [
    (513, 80, 44100, 0.0, 22050.0), (257, 64, 16000, 20.0, 7600.0), (1025, 128, 48000, 0.0, 24000.0),
    (201, 40, 8000, 100.0, 3800.0), (513, 96, 44100, 30.0, 16000.0)])
def test_filterbank_matches_torch_for_other_configs(n_freqs, n_mels, sample_rate, f_min, f_max):
    torch = pytest.importorskip("torch")
    expected = _torchaudio_fbanks(torch, n_freqs, f_min, f_max, n_mels, sample_rate)
    # Equal up to one float32 ulp in a mel edge (see the module docstring).
    np.testing.assert_allclose(mel_filterbank(n_freqs, n_mels, sample_rate, f_min, f_max), expected,
                               rtol=0, atol=2e-5)


@pytest.mark.parametrize("n", [1, 2, 5, 400, 512, 2048])
def test_window_matches_torch(n):
    torch = pytest.importorskip("torch")
    np.testing.assert_allclose(hann_window(n), torch.hann_window(n).numpy(), rtol=0, atol=6e-8)


def test_filterbank_shape_and_triangles():
    fb = mel_filterbank(n_freqs=1025, n_mels=64, sample_rate=48000)
    assert fb.shape == (1025, 64)
    assert fb.min() == 0.0 and fb.max() <= 1.0
    assert np.all(fb.max(axis=0) > 0.5)                       # no empty band at this resolution
    assert np.all(np.diff(fb.argmax(axis=0)) >= 0)            # band centres rise with the band index


def test_results_are_cached_and_read_only():
    assert mel_filterbank() is mel_filterbank(513, 96, 44100, 0.0, 22050.0)
    assert hann_window(1024) is hann_window(1024)
    with pytest.raises(ValueError):
        mel_filterbank()[0, 0] = 1.0
    with pytest.raises(ValueError):
        hann_window(16)[0] = 1.0


@pytest.mark.parametrize("kwargs", [dict(n_freqs=1), dict(n_mels=0), dict(sample_rate=0),
                                    dict(f_min=-1.0), dict(f_min=8000.0, f_max=4000.0)])
def test_filterbank_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError, match="expected"):
        mel_filterbank(**kwargs)


def test_window_rejects_empty_length():
    with pytest.raises(ValueError, match="expected a length"):
        hann_window(0)


def test_runtime_modules_do_not_import_torch():
    code = ("import sys, meltok_runtime.melfilters, meltok_runtime.io.tokenfile, meltok_runtime.io.audio; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'meltok', 'meltok_export')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
