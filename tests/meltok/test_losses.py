"""Stage-2 phase-aware and level losses on real audio: zero for identical signals, positive and
differentiable otherwise, anti-wrapping exact around +-pi, and each loss sees what it is for."""
import math

import numpy as np
import pytest
import torch

from meltok.train.losses import ComplexSTFTLoss, LevelLoss, PhaseLoss, anti_wrap


@pytest.fixture(scope="module")
def clips(real_clips):
    """``[3, 24320]`` float32: one training-crop length of music, speech and effects."""
    return torch.from_numpy(np.stack([real_clips[name][44100:44100 + 24320]
                                      for name in ("music", "speech", "effects")]))


def log_mel(audio: torch.Tensor) -> torch.Tensor:
    from meltok.config import FrontendConfig
    from meltok.frontend import MelFrontend

    return MelFrontend(FrontendConfig())(audio)


def test_anti_wrap_around_pi():
    two_pi = 2 * math.pi
    x = torch.tensor([0.0, 0.5, -0.5, math.pi - 1e-3, -math.pi + 1e-3, math.pi + 0.25, -math.pi - 0.25,
                      two_pi - 0.1, -two_pi + 0.1, 3 * two_pi + 0.2, two_pi], dtype=torch.float64)
    expected = torch.tensor([0.0, 0.5, 0.5, math.pi - 1e-3, math.pi - 1e-3, math.pi - 0.25, math.pi - 0.25,
                             0.1, 0.1, 0.2, 0.0], dtype=torch.float64)
    torch.testing.assert_close(anti_wrap(x), expected, rtol=0, atol=1e-9)
    assert float(anti_wrap(torch.linspace(-20, 20, 1001)).max()) <= math.pi + 1e-6


def test_phase_loss_zero_for_identical_and_phase_sensitive(clips):
    loss = PhaseLoss((1024, 512))
    same = loss(clips, clips)
    assert set(same) == {"ip", "gd", "td"} and all(float(v) == 0.0 for v in same.values())
    shifted = loss(torch.roll(clips, 64, dims=-1), clips)  # same magnitudes, other phases
    negated = loss(-clips, clips)  # a phase of exactly pi in every bin; differences unchanged
    assert all(0.1 < float(v) <= math.pi for v in shifted.values())
    assert float(negated["ip"]) == pytest.approx(math.pi, abs=1e-3)
    assert float(negated["gd"]) < 1e-3 and float(negated["td"]) < 1e-3


def test_phase_and_complex_losses_are_differentiable(clips):
    prediction = (clips + 0.01 * torch.randn(clips.shape, generator=torch.Generator().manual_seed(0))).requires_grad_()
    terms = PhaseLoss()(prediction, clips)
    total = sum(terms.values()) + ComplexSTFTLoss()(prediction, clips)
    assert float(total.detach()) > 0
    total.backward()
    assert torch.isfinite(prediction.grad).all() and float(prediction.grad.abs().sum()) > 0
    silent = torch.zeros(1, 4096, requires_grad=True)  # no energy: no phase to learn, no NaN
    phase = PhaseLoss()(silent, clips[:1, :4096])
    sum(phase.values()).backward()
    assert torch.isfinite(silent.grad).all()


def test_complex_stft_loss(clips):
    loss = ComplexSTFTLoss()
    assert float(loss(clips, clips)) == 0.0
    assert float(loss(-clips, clips)) == pytest.approx(2.0, rel=1e-4)  # ||-X - X|| / ||X||
    assert float(loss(0.5 * clips, clips)) == pytest.approx(0.5, rel=1e-4)


def test_level_loss_sees_level_that_a_log_mel_l1_misses(clips):
    """Harmonics smeared over 8-band blocks at the *median* log level (what a log-domain L1
    prefers) lose energy; smeared at the log of the block's mean power they keep it. The log-mel
    L1 prefers the first, the level loss the second."""
    loss = LevelLoss(bands=8, frames=16)
    mel = log_mel(clips)
    assert float(loss(mel, mel, clips, clips)) == 0.0
    quieter = 0.5 * clips
    assert float(loss(log_mel(quieter), mel, quieter, clips)) == pytest.approx(2 * 2 * math.log(2), rel=5e-3)
    blocks = mel.reshape(mel.shape[0], -1, 8, mel.shape[-1])
    median = blocks.median(dim=2, keepdim=True).values.expand_as(blocks).reshape(mel.shape)
    energy = (0.5 * torch.log(torch.exp(2 * blocks).mean(dim=2, keepdim=True))).expand_as(blocks).reshape(mel.shape)
    l1 = torch.nn.functional.l1_loss
    assert float(l1(median, mel)) < float(l1(energy, mel))
    assert float(loss(energy, mel, clips, clips)) < 1e-4 < 0.1 < float(loss(median, mel, clips, clips))


def test_level_loss_ignores_inaudible_blocks(clips):
    """Real crops whose second half is 80 dB down: changing the blocks under the floor (60 dB
    below the crop's mean block power) barely moves the loss; the same change to the audible
    blocks does."""
    loss = LevelLoss(bands=8, frames=16)
    faded = clips.clone()
    faded[:, clips.shape[-1] // 2:] *= 1e-4
    mel = log_mel(faded)
    power = torch.nn.functional.avg_pool2d(torch.exp(2 * mel)[:, None], (8, 16), ceil_mode=True)[:, 0]
    quiet = (power < 1e-6 * power.mean(dim=(1, 2), keepdim=True)).repeat_interleave(8, 1).repeat_interleave(16, 2)
    quiet = quiet[:, :mel.shape[1], :mel.shape[2]]
    assert quiet.float().mean() > 0.2
    assert float(loss(torch.where(quiet, mel - 5.0, mel), mel, faded, faded)) < 1e-3
    assert float(loss(torch.where(quiet, mel, mel - 5.0), mel, faded, faded)) > 1.0
