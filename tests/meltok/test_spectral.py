"""Conv STFT / ISTFT against torch.stft / torch.istft (center=True, periodic Hann)."""
import numpy as np
import pytest
import torch

from meltok.spectral import ConvISTFT, ConvSTFT

N_FFT, HOP = 1024, 256


def reference_stft(audio):
    return torch.stft(audio, N_FFT, HOP, window=torch.hann_window(N_FFT), center=True, pad_mode="reflect",
                      return_complex=True)


@pytest.mark.parametrize("length", [1537, 12345, 44100, 44101])
def test_stft_matches_torch_on_random_audio(length):
    audio = torch.randn(2, length, generator=torch.Generator().manual_seed(length))
    real, imag = ConvSTFT(N_FFT, HOP)(audio)
    ref = reference_stft(audio)
    assert real.shape == ref.shape == (2, N_FFT // 2 + 1, length // HOP + 1)
    scale = ref.abs().max()
    assert (real - ref.real).abs().max() / scale < 2e-6
    assert (imag - ref.imag).abs().max() / scale < 2e-6


def test_stft_magnitude_matches_torch_on_real_audio(real_clips):
    stft = ConvSTFT(N_FFT, HOP)
    for name, audio in real_clips.items():
        audio = torch.from_numpy(audio[None, :44100 * 3 + 77])
        ref = reference_stft(audio).abs()
        error = (stft.magnitude(audio) - ref).abs().max() / ref.max()
        assert error < 2e-6, name


@pytest.mark.parametrize("frames", [2, 7, 173, 174])
def test_istft_matches_torch_on_random_spectra(frames):
    gen = torch.Generator().manual_seed(frames)
    spec = torch.complex(torch.randn(3, N_FFT // 2 + 1, frames, generator=gen),
                         torch.randn(3, N_FFT // 2 + 1, frames, generator=gen))
    ours = ConvISTFT(N_FFT, HOP)(spec.real, spec.imag)
    ref = torch.istft(spec, N_FFT, HOP, window=torch.hann_window(N_FFT), center=True)
    assert ours.shape == ref.shape == (3, (frames - 1) * HOP)
    assert (ours - ref).abs().max() / ref.abs().max() < 2e-6


def test_stft_istft_round_trip_on_real_audio(real_clips):
    audio = torch.from_numpy(real_clips["music"][None, :44100 * 2 + 1])
    real, imag = ConvSTFT(N_FFT, HOP)(audio)
    back = ConvISTFT(N_FFT, HOP)(real, imag)
    length = back.shape[-1]
    assert length == (audio.shape[-1] // HOP) * HOP
    np.testing.assert_allclose(back.numpy(), audio[:, :length].numpy(), atol=2e-6)
