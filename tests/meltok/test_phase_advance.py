"""The phase-advance vocoder head (``VocoderConfig.head = "phase_advance"``): shapes, bin-centre
frequencies at zero deviation, phase carried across calls, conversion from the reference head,
its losses, and that the reference head's configs and ids are untouched."""
import json
import math

import numpy as np
import pytest
import torch

from meltok import MelTok
from meltok.config import MelTokConfig, VocoderConfig, edge, head_variant, tiny
from meltok.default_model import default_model_path
from meltok.errors import ConfigError
from meltok.modelfile import model_id_of, read_model_metadata, weights_hash
from meltok.spectral import ConvSTFT
from meltok.train.config import TrainConfig
from meltok.train.losses import HeadFrameLoss
from meltok.vocoder import ISTFTHead, PhaseAdvanceHead, wrap_phase

SR = 44100


def _head(seed: int = 0, dim: int = 16) -> PhaseAdvanceHead:
    torch.manual_seed(seed)
    head = PhaseAdvanceHead(VocoderConfig(dim=dim))
    with torch.no_grad():
        head.out.weight.normal_(0, 0.3)
    return head.eval()


def _line(audio: np.ndarray, frequency: float) -> tuple[float, float]:
    """(strongest line in Hz, share of the energy within 1% of ``frequency``)."""
    audio = audio[2048:-2048]
    power = np.abs(np.fft.rfft(audio * np.hanning(len(audio)))) ** 2
    frequencies = np.fft.rfftfreq(len(audio), 1 / SR)
    near = np.abs(frequencies - frequency) <= 0.01 * frequency
    return float(frequencies[np.argmax(power)]), float(power[near].sum() / power.sum())


def test_shapes_and_final_phase_range():
    head = _head()
    x = torch.randn(3, 10, 16)
    log_magnitude, deviation, phase = head.spectrum(x)
    assert log_magnitude.shape == deviation.shape == phase.shape == (3, 513, 10)
    assert deviation.abs().max() < math.pi
    audio, final = head.forward_with_state(x)
    assert audio.shape == (3, 9 * 256) and final.shape == (3, 513)
    assert torch.equal(audio, head(x))
    assert final.min() >= -math.pi and final.max() < math.pi


@pytest.mark.parametrize("k", [40, 93])
def test_zero_deviation_gives_bin_centre_frequencies(k):
    frequency = k * SR / 1024
    log_magnitude = torch.full((1, 513, 300), math.log(1e-5))
    log_magnitude[:, k] = math.log(50.0)
    head = _head()
    audio = head.synthesize(log_magnitude, head.integrate(torch.zeros_like(log_magnitude)))[0].numpy()
    strongest, share = _line(audio, frequency)
    assert abs(strongest - frequency) < 0.001 * frequency
    assert share > 0.99  # no comb: the energy stays on the bin's centre frequency


@pytest.mark.parametrize("frequency", [110.0, 1000.0, 4000.0])
def test_true_advance_returns_a_tone_between_bins(frequency):
    t = np.arange(SR * 2) / SR
    tone = torch.from_numpy((0.25 * np.sin(2 * np.pi * frequency * t)).astype(np.float32))[None]
    real, imag = ConvSTFT()(tone)
    log_magnitude = torch.log(torch.sqrt(real ** 2 + imag ** 2).clamp(min=1e-5))
    true_phase = torch.atan2(imag, real)
    advance = torch.diff(true_phase, dim=-1, prepend=torch.zeros_like(true_phase[..., :1]))
    centre = 2 * math.pi * torch.arange(513)[:, None] * 256 / 1024
    head = _head()
    audio = head.synthesize(log_magnitude, head.integrate(wrap_phase(advance - centre)))[0].numpy()
    strongest, share = _line(audio, frequency)
    assert abs(strongest - frequency) < 0.01 * frequency and share > 0.99
    np.testing.assert_allclose(audio, tone[0, :len(audio)].numpy(), atol=1e-3)


def test_centre_part_is_exact_for_long_inputs():
    head = _head()
    frames = 200_003
    phase = head.integrate(torch.zeros(1, 513, frames))
    k, t = 7, frames - 1
    assert math.isclose(float(phase[0, k, t]), ((k * (t + 1)) % 4) * math.pi / 2, abs_tol=1e-6)


def test_carried_phase_continues_one_call():
    head = _head(seed=1).requires_grad_(False)
    x = torch.randn(2, 40, 16)
    initial = wrap_phase(torch.randn(2, 513) * 3)
    log_magnitude, _, phase = head.spectrum(x, initial)
    _, first_final = head.forward_with_state(x[:, :25], initial)
    _, _, second = head.spectrum(x[:, 25:], first_final)
    whole = torch.polar(log_magnitude.exp(), phase)
    split = torch.polar(log_magnitude[..., 25:].exp(), second)
    scale = float(log_magnitude.exp().max().detach())
    torch.testing.assert_close(split, whole[..., 25:], rtol=0, atol=2e-4 * scale)
    _, final = head.forward_with_state(x, initial)
    _, split_final = head.forward_with_state(x[:, 25:], first_final)
    assert wrap_phase(final - split_final).abs().max() < 1e-4


def test_default_config_builds_the_reference_head_and_keeps_its_json():
    config = edge()
    assert config.vocoder.head == "istft"
    assert isinstance(MelTok(config).head, ISTFTHead)
    assert "head" not in json.loads(config.to_json())["vocoder"]
    advance = head_variant(config, "phase_advance")
    assert advance.name == "meltok-edge-phase-advance"
    assert json.loads(advance.to_json())["vocoder"]["head"] == "phase_advance"
    assert MelTokConfig.from_json(advance.to_json()) == advance
    with pytest.raises(ConfigError, match="vocoder head"):
        VocoderConfig(head="griffin_lim")


def test_shipped_model_config_and_id_are_unchanged():
    metadata = read_model_metadata(default_model_path())
    config = MelTokConfig.from_json(metadata["config"])
    assert json.loads(config.to_json())["vocoder"] == json.loads(metadata["config"])["vocoder"]
    assert MelTok.load().model_id == metadata["model_id"]
    model = MelTok.from_config("tiny")
    digest = weights_hash(model.state_dict())
    same = model_id_of(MelTokConfig.from_json(model.config.to_json()), digest)
    assert model_id_of(model.config, digest) == same  # the reference head leaves the id rule as it was
    advance = model_id_of(head_variant(model.config, "phase_advance"), digest)
    assert advance.split(":")[1] != same.split(":")[1]  # another head is another architecture


def test_conversion_copies_weights_and_starts_at_bin_centres():
    torch.manual_seed(0)
    reference = MelTok(tiny())
    model = reference.with_vocoder_head("phase_advance")
    assert isinstance(model.head, PhaseAdvanceHead) and model.config.vocoder.head == "phase_advance"
    bins = model.head.bins
    torch.testing.assert_close(model.head.out.weight[:bins], reference.head.out.weight[:bins])
    assert not model.head.out.weight[bins:].any() and not model.head.out.bias[bins:].any()
    for key, value in reference.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(model.state_dict()[key], value), key
    features = model.backbone(torch.randn(1, 96, 12))
    _, deviation, _ = model.head.spectrum(features)
    assert not deviation.any()
    assert reference.with_vocoder_head("istft") is reference
    with pytest.raises(ConfigError, match="cannot initialise"):
        model.with_vocoder_head("istft")


def test_head_frame_losses_vanish_on_the_target_only():
    torch.manual_seed(0)
    audio = torch.randn(2, 24320) * 0.1
    real, imag = ConvSTFT()(audio)
    log_magnitude = torch.log(torch.sqrt(real ** 2 + imag ** 2).clamp(min=1e-5))
    phase = torch.atan2(imag, real)
    loss = HeadFrameLoss()
    exact = loss(log_magnitude, phase + 2 * math.pi * torch.randint(-3, 4, phase.shape), audio)
    assert set(exact) == {"head_logmag", "head_if", "head_gd"}
    assert all(value < 1e-4 for value in exact.values()), exact
    off = loss(log_magnitude + 0.3 * torch.randn_like(log_magnitude), phase + 0.5 * torch.randn_like(phase), audio)
    assert all(value > 0.05 for value in off.values()), off


def test_train_config_names_the_head():
    config = TrainConfig().replace(**{"stage2.head": "phase_advance"})
    assert config.stage2.head == "phase_advance"
    assert TrainConfig.from_json(config.to_json()) == config
    with pytest.raises(Exception, match="stage2.head"):
        TrainConfig().replace(**{"stage2.head": "nope"})

