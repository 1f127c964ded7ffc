"""Training losses: log-mel L1, multi-resolution STFT, phase-aware (anti-wrapped phase losses,
complex STFT), level, perceptual (VGG19 or a weight-free substitute), hinge GAN and feature
matching.

Spectral losses run in float32 with autocast disabled (bf16 FFTs are not supported and would
be too coarse for log spectra).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from meltok_runtime.errors import ModelFileError

from ..spectral import ConvSTFT

log = logging.getLogger(__name__)


def float32_region(tensor: torch.Tensor):
    """Autocast disabled for the device of ``tensor`` (a context manager)."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def mel_l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of two log-mels ``[B, n_mels, T]`` (the shorter length is used)."""
    frames = min(prediction.shape[-1], target.shape[-1])
    return F.l1_loss(prediction[..., :frames].float(), target[..., :frames].float())


class MultiResolutionSTFTLoss(nn.Module):
    """Spectral convergence + log-magnitude L1, averaged over STFT resolutions.

    Resolution ``n_fft`` uses hop ``n_fft // 4`` and a Hann window of ``n_fft``.
    ``forward(prediction [B, N], target [B, N]) -> scalar`` (lengths trimmed to the shorter).
    """

    def __init__(self, ffts=(2048, 1024, 512), eps: float = 1e-7):
        super().__init__()
        self.ffts, self.eps = tuple(ffts), eps
        for n_fft in self.ffts:
            self.register_buffer(f"window_{n_fft}", torch.hann_window(n_fft), persistent=False)

    def _magnitude(self, audio: torch.Tensor, n_fft: int) -> torch.Tensor:
        spec = torch.stft(audio, n_fft, hop_length=n_fft // 4, window=getattr(self, f"window_{n_fft}"),
                          center=True, return_complex=True)
        return torch.sqrt(torch.clamp(spec.real ** 2 + spec.imag ** 2, min=self.eps ** 2))

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        length = min(prediction.shape[-1], target.shape[-1])
        with float32_region(prediction):
            prediction, target = prediction[..., :length].float(), target[..., :length].float()
            total = prediction.new_zeros(())
            for n_fft in self.ffts:
                pred, ref = self._magnitude(prediction, n_fft), self._magnitude(target, n_fft)
                convergence = torch.linalg.vector_norm(ref - pred) / torch.clamp(
                    torch.linalg.vector_norm(ref), min=self.eps)
                total = total + convergence + F.l1_loss(torch.log(pred), torch.log(ref))
        return total / len(self.ffts)


def _stft(audio: torch.Tensor, n_fft: int, window: torch.Tensor) -> torch.Tensor:
    """Complex STFT ``[B, n_fft // 2 + 1, frames]``: hop ``n_fft // 4``, centred, float32."""
    return torch.stft(audio.float(), n_fft, hop_length=n_fft // 4, window=window, center=True, return_complex=True)


def anti_wrap(phase: torch.Tensor) -> torch.Tensor:
    """``|x - 2 pi round(x / 2 pi)|``: the distance of a phase difference from the nearest
    multiple of ``2 pi``, in ``[0, pi]`` (APNet's anti-wrapping function)."""
    return torch.abs(phase - 2 * math.pi * torch.round(phase / (2 * math.pi)))


class PhaseLoss(nn.Module):
    """APNet's phase losses on the STFT of waveforms: instantaneous phase (IP), group delay (GD,
    the phase difference along frequency) and instantaneous angular frequency / time difference
    (TD, the phase difference along time), each the anti-wrapped error, at every ``n_fft`` of
    ``ffts`` (hop ``n_fft // 4``), averaged over resolutions.

    APNet predicts phase directly; here the phase comes from a waveform, where near-silent bins
    have meaningless phase and a gradient ``1 / |X|`` that explodes. Each bin's error is therefore
    weighted by ``m = |X_ref| * |X_pred|`` (the prediction's magnitude detached) divided by the
    mean of ``m`` over the frames of its frequency bin (floored at ``rel_floor`` times the mean
    over all bins): every frequency counts alike, as the frame-rate lines do (most of them lie
    in quiet high bands), and within a frequency the louder frames count more. Weights are
    normalised to sum to one per term. ``forward(prediction [B, N], target [B, N]) -> {"ip",
    "gd", "td"}`` scalars in radians (0 for identical signals, at most pi).
    """

    def __init__(self, ffts=(1024,), rel_floor: float = 1e-4):
        super().__init__()
        self.ffts, self.rel_floor = tuple(ffts), rel_floor
        for n_fft in self.ffts:
            self.register_buffer(f"window_{n_fft}", torch.hann_window(n_fft), persistent=False)

    def _weights(self, pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """``[B, F, T]`` bin weights (see the class docstring)."""
        product = ref.abs() * pred.detach().abs()
        per_bin = product.mean(dim=-1, keepdim=True)
        floor = self.rel_floor * product.mean(dim=(-2, -1), keepdim=True)
        return product / torch.maximum(per_bin, floor).clamp(min=1e-30)

    @staticmethod
    def _weighted(error: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return (error * weight).sum() / torch.clamp(weight.sum(), min=1e-12)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        length = min(prediction.shape[-1], target.shape[-1])
        terms = {"ip": 0.0, "gd": 0.0, "td": 0.0}
        with float32_region(prediction):
            for n_fft in self.ffts:
                window = getattr(self, f"window_{n_fft}")
                pred, ref = _stft(prediction[..., :length], n_fft, window), _stft(target[..., :length], n_fft, window)
                weight = self._weights(pred, ref)
                safe = pred + (weight == 0).to(pred.dtype) * 1e-12  # atan2(0, 0) has no gradient
                phase_pred, phase_ref = torch.angle(safe), torch.angle(ref)
                terms["ip"] = terms["ip"] + self._weighted(anti_wrap(phase_pred - phase_ref), weight)
                gd = anti_wrap(phase_pred.diff(dim=-2) - phase_ref.diff(dim=-2))
                terms["gd"] = terms["gd"] + self._weighted(gd, torch.minimum(weight[:, 1:], weight[:, :-1]))
                td = anti_wrap(phase_pred.diff(dim=-1) - phase_ref.diff(dim=-1))
                terms["td"] = terms["td"] + self._weighted(td, torch.minimum(weight[..., 1:], weight[..., :-1]))
        return {name: value / len(self.ffts) for name, value in terms.items()}


class HeadFrameLoss(nn.Module):
    """Supervision of a phase-advance head on its own frames: head frame ``t`` is frame ``t`` of the
    target's STFT (``n_fft``, ``hop``, centred, periodic Hann: the head's grid).

    Terms (``forward(log_magnitude [B, F, T], phase [B, F, T], target [B, N]) -> {"head_logmag",
    "head_if", "head_gd"}``; the head's running phase, unwrapped or not):

    - ``head_logmag``: L1 of log-magnitudes, both clamped to ``[ln floor, ln max_magnitude]``
      (what the head can synthesise);
    - ``head_if``: anti-wrapped error of the per-frame phase advance (instantaneous frequency);
    - ``head_gd``: anti-wrapped error of the phase difference between adjacent bins (group delay).

    Phase terms are weighted by the target's magnitude (the smaller of the two bins or frames
    compared), so the partials that carry pitch count and the random phase of quiet noise does
    not; each term is 0 for the target's own STFT.
    """

    def __init__(self, n_fft: int = 1024, hop_length: int = 256, floor: float = 1e-5,
                 max_magnitude: float = 100.0):
        super().__init__()
        self.stft = ConvSTFT(n_fft, hop_length)
        self.log_min, self.log_max = math.log(floor), math.log(max_magnitude)

    def forward(self, log_magnitude: torch.Tensor, phase: torch.Tensor, target: torch.Tensor):
        with float32_region(target):
            real, imag = self.stft(target.float())
            frames = min(log_magnitude.shape[-1], real.shape[-1])
            real, imag = real[..., :frames], imag[..., :frames]
            log_magnitude, phase = log_magnitude[..., :frames].float(), phase[..., :frames].float()
            magnitude = torch.sqrt(real * real + imag * imag)
            reference = torch.log(torch.clamp(magnitude, min=math.exp(self.log_min)))
            losses = {"head_logmag": F.l1_loss(torch.clamp(log_magnitude, self.log_min, self.log_max),
                                               torch.clamp(reference, max=self.log_max))}
            true_phase = torch.atan2(imag, real)
            weight = magnitude
            advance = anti_wrap(phase.diff(dim=-1) - true_phase.diff(dim=-1))
            losses["head_if"] = _weighted_mean(advance, torch.minimum(weight[..., 1:], weight[..., :-1]))
            delay = anti_wrap(phase.diff(dim=-2) - true_phase.diff(dim=-2))
            losses["head_gd"] = _weighted_mean(delay, torch.minimum(weight[:, 1:], weight[:, :-1]))
        return losses


def _weighted_mean(error: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (error * weight).sum() / torch.clamp(weight.sum(), min=1e-12)


class ComplexSTFTLoss(nn.Module):
    """Multi-resolution complex STFT loss: ``||X_pred - X_ref||_F / ||X_ref||_F`` of the complex
    spectra (magnitude and phase together), averaged over ``ffts`` (hop ``n_fft // 4``).
    ``forward(prediction [B, N], target [B, N]) -> scalar`` (0 for identical signals)."""

    def __init__(self, ffts=(2048, 1024, 512), eps: float = 1e-7):
        super().__init__()
        self.ffts, self.eps = tuple(ffts), eps
        for n_fft in self.ffts:
            self.register_buffer(f"window_{n_fft}", torch.hann_window(n_fft), persistent=False)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        length = min(prediction.shape[-1], target.shape[-1])
        total = prediction.new_zeros((), dtype=torch.float32)
        with float32_region(prediction):
            for n_fft in self.ffts:
                window = getattr(self, f"window_{n_fft}")
                pred, ref = _stft(prediction[..., :length], n_fft, window), _stft(target[..., :length], n_fft, window)
                total = total + torch.linalg.vector_norm(pred - ref) / torch.clamp(
                    torch.linalg.vector_norm(ref), min=self.eps)
        return total / len(self.ffts)


class LevelLoss(nn.Module):
    """Energy-preserving level loss: L1 of the natural log of mel *power* pooled over blocks of
    ``bands`` mel bands x ``frames`` frames, plus L1 of the log RMS of each crop.

    A log-mel L1 alone is minimised by the median of the log spectrum over what the model cannot
    predict (fine harmonic structure), which lies below the log of the mean power: peaky spectra
    (piano, voiced speech) come out quieter. Pooling the power before the log makes the target the
    energy, so the level is kept. Block powers are floored at ``rel_floor`` times the crop's mean
    block power (-60 dB), so inaudible blocks neither dominate the loss nor its gradient.
    ``forward(log_mel_pred [B, M, T], log_mel_ref [B, M, T], prediction [B, N], target [B, N]) ->
    scalar`` (0 for identical inputs; log mels are ``ln(mel magnitude)``).
    """

    def __init__(self, bands: int = 8, frames: int = 16, rel_floor: float = 1e-6, eps: float = 1e-10):
        super().__init__()
        self.bands, self.frames, self.rel_floor, self.eps = bands, frames, rel_floor, eps

    def forward(self, log_mel_pred, log_mel_ref, prediction, target) -> torch.Tensor:
        length = min(prediction.shape[-1], target.shape[-1])
        with float32_region(prediction):
            power = [torch.mean(x[..., :length].float() ** 2, dim=-1) for x in (prediction, target)]
            overall = F.l1_loss(torch.log(power[0] + self.eps), torch.log(power[1] + self.eps))
        return self.blocks(log_mel_pred, log_mel_ref) + overall

    def blocks(self, log_mel_pred, log_mel_ref) -> torch.Tensor:
        """The block term alone (what a mel decoder without audio is trained with): ``[B, M, T]`` twice ->
        scalar."""
        frames = min(log_mel_pred.shape[-1], log_mel_ref.shape[-1])
        with float32_region(log_mel_pred):
            pooled = [F.avg_pool2d(torch.exp(2 * m[..., :frames].float())[:, None], (self.bands, self.frames),
                                   ceil_mode=True) for m in (log_mel_pred, log_mel_ref)]
            floor = self.rel_floor * pooled[1].mean(dim=(1, 2, 3), keepdim=True) + self.eps
            return F.l1_loss(torch.log(torch.maximum(pooled[0], floor)), torch.log(torch.maximum(pooled[1], floor)))


# ----------------------------------------------------------------------------- perceptual
# torchvision's vgg19().features: 16 3x3 convs in 5 blocks, ReLU after each, max-pool after each block.
VGG19_BLOCKS = ((3, 64, 64), (64, 128, 128), (128, 256, 256, 256, 256), (256, 512, 512, 512, 512),
                (512, 512, 512, 512, 512))


class VGG19Features(nn.Module):
    """The convolutional ``features`` stack of torchvision's VGG19 with its layer indices, so a
    torchvision state dict (``features.N.weight``) loads as is; no torchvision needed.

    ``forward(x [B, 3, H, W]) -> list of 16 pre-ReLU activations`` (the last pool is skipped).
    """

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        for widths in VGG19_BLOCKS:
            for cin, cout in zip(widths[:-1], widths[1:]):
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=False)]
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        activations = []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d) and len(activations) == 16:
                break
            x = layer(x)
            if isinstance(layer, nn.Conv2d):
                activations.append(x)
        return activations

    @classmethod
    def from_file(cls, path) -> "VGG19Features":
        """Load torchvision VGG19 weights (a full ``vgg19`` state dict or only its ``features.*``;
        ``.pth`` read with ``torch.load(weights_only=True)`` or ``.safetensors``)."""
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"VGG19 weights {str(path)!r} do not exist; give torchvision's vgg19 "
                                 "state dict (e.g. vgg19-dcbb9e9d.pth)")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch and safetensors raise several types for foreign files
            raise ModelFileError(f"cannot read VGG19 weights {str(path)!r} ({str(error).splitlines()[0][:160]})")
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        features = {k: v for k, v in state.items() if k.startswith("features.")} if isinstance(state, dict) else {}
        model = cls()
        expected = model.state_dict()
        if set(features) != set(expected) or any(features[k].shape != v.shape for k, v in expected.items()):
            raise ModelFileError(f"{str(path)!r} does not hold torchvision VGG19 weights: expected keys "
                                 f"features.0.weight ... features.34.bias with VGG19 shapes")
        model.load_state_dict(features)
        return model


class VGGPerceptualLoss(nn.Module):
    """Reference perceptual loss: mean over the 16 conv layers of the MSE of pre-ReLU VGG19
    activations. Input: the scaled log-mel image ``x = logmel / 5`` ``[B, n_mels, T]``, fed as
    ``(x + 1) / 2`` repeated to 3 channels (no ImageNet normalisation). Frozen."""

    name = "vgg19"

    def __init__(self, vgg: VGG19Features):
        super().__init__()
        self.vgg = vgg.eval().requires_grad_(False)

    def train(self, mode: bool = True):  # always eval: frozen feature extractor
        return super().train(False)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        frames = min(prediction.shape[-1], target.shape[-1])
        pred = ((prediction[..., :frames] + 1) / 2)[:, None].expand(-1, 3, -1, -1)
        ref = ((target[..., :frames] + 1) / 2)[:, None].expand(-1, 3, -1, -1)
        with torch.no_grad():
            ref_features = self.vgg(ref)
        losses = [F.mse_loss(p.float(), r.float()) for p, r in zip(self.vgg(pred), ref_features)]
        return torch.stack(losses).mean()


class MelGradientLoss(nn.Module):
    """Weight-free substitute for the VGG loss ("mel-gradient").

    L1 between the time and frequency first differences of prediction and target, on the
    scaled log-mel image and on 2x and 4x average-pooled versions, averaged. Like the VGG
    loss it penalises blurred harmonics and smeared onsets that a plain L1 tolerates; it
    costs a few element-wise passes instead of a VGG19 forward/backward.
    ``forward(prediction [B, n_mels, T], target [B, n_mels, T]) -> scalar``.
    """

    name = "mel-gradient"

    def __init__(self, scales=(1, 2, 4)):
        super().__init__()
        self.scales = tuple(scales)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        frames = min(prediction.shape[-1], target.shape[-1])
        pred, ref = prediction[:, None, :, :frames].float(), target[:, None, :, :frames].float()
        total = pred.new_zeros(())
        for scale in self.scales:
            p = F.avg_pool2d(pred, scale, ceil_mode=True) if scale > 1 else pred
            r = F.avg_pool2d(ref, scale, ceil_mode=True) if scale > 1 else ref
            total = total + F.l1_loss(p.diff(dim=-1), r.diff(dim=-1)) + F.l1_loss(p.diff(dim=-2), r.diff(dim=-2))
        return total / len(self.scales)


def build_perceptual(choice: str, vgg_weights=None) -> tuple[nn.Module | None, str]:
    """``(loss module or None, resolved name)`` for ``Stage1Config.perceptual``.

    ``"auto"`` gives ``"vgg19"`` when ``vgg_weights`` is a path, else ``"mel-gradient"``.
    """
    if choice == "auto":
        choice = "vgg19" if vgg_weights else "mel-gradient"
    if choice == "vgg19":
        if not vgg_weights:
            raise ModelFileError("the VGG19 perceptual loss needs torchvision VGG19 weights; pass --vgg-weights")
        return VGGPerceptualLoss(VGG19Features.from_file(vgg_weights)), "vgg19"
    if choice == "mel-gradient":
        return MelGradientLoss(), "mel-gradient"
    if choice == "none":
        return None, "none"
    raise ValueError(f"unknown perceptual loss {choice!r}")


# ----------------------------------------------------------------------------- GAN
def discriminator_hinge(real_scores: list[torch.Tensor], fake_scores: list[torch.Tensor]) -> torch.Tensor:
    """Hinge loss ``mean(relu(1 - D(y))) + mean(relu(1 + D(y_hat)))``, averaged over sub-discriminators."""
    losses = [F.relu(1 - r.float()).mean() + F.relu(1 + f.float()).mean() for r, f in zip(real_scores, fake_scores)]
    return torch.stack(losses).mean()


def generator_hinge(fake_scores: list[torch.Tensor]) -> torch.Tensor:
    """Generator hinge loss ``mean(relu(1 - D(y_hat)))``, averaged over sub-discriminators."""
    return torch.stack([F.relu(1 - f.float()).mean() for f in fake_scores]).mean()


def feature_matching(real_maps: list[list[torch.Tensor]], fake_maps: list[list[torch.Tensor]]) -> torch.Tensor:
    """L1 between discriminator feature maps: summed over layers, averaged over sub-discriminators."""
    per_disc = [sum(F.l1_loss(f.float(), r.detach().float()) for r, f in zip(reals, fakes))
                for reals, fakes in zip(real_maps, fake_maps)]
    return torch.stack(per_disc).mean()
