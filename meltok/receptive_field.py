"""The finite receptive field of the time-local variant, in audio samples, read from the config.

With ``S = hop * compression`` samples per token column (2048 for the paper layout):

- encoding: token column ``j`` depends only on the audio samples ``[S * j + lo, S * j + hi]``;
- decoding: token column ``j`` influences only the decoded samples ``[S * j + lo, S * j + hi]``.

Both follow every layer's extent along time: 3x3 convolutions (one position each side), ResNet
blocks (two of them), attention (``attention_radius`` positions each side), the encoder's stride-2
downsampling (zero-pad right, 3x3 kernel) and Haar patching, the decoder's nearest x2 upsampling,
the inverse Haar, the vocoder's k7 convolutions and the STFT/ISTFT frames (``n_fft`` samples centred
on each hop; the periodic Hann window is 0 at its first sample). Normalisation is per column
(GroupNorm) or per frame (LayerNorm), so it adds nothing.
Streams (``meltok_runtime.stream``) use these spans to keep only exact results; the reference
architecture has no finite span (GroupNorm and attention see the whole input).
"""
from __future__ import annotations

from .config import MelTokConfig
from .vocoder import KERNEL_SIZE

CONV = 1  # positions each side of a 3x3 convolution
RESNET = 2 * CONV  # two 3x3 convolutions per ResNet block


def _level_extent(config: MelTokConfig, level: int, blocks: int) -> int:
    """Positions each side that one level's ResNet blocks and attention add."""
    tok = config.tokenizer
    attention = tok.attention_radius if tok.level_has_attention(level) else 0
    return blocks * (RESNET + attention)


def encoder_dependency(config: MelTokConfig) -> tuple[int, int]:
    """``(lo, hi)``: token column ``j`` depends on audio samples ``[S * j + lo, S * j + hi]``."""
    tok, front = config.tokenizer, config.frontend
    _require_time_local(config)
    extent = CONV + 2 * RESNET + tok.attention_radius  # conv_out, then the middle block (backwards)
    lo, hi = -extent, extent
    for level in reversed(range(tok.num_levels)):
        if level != tok.num_levels - 1:  # this level's 3x3 stride-2 downsampling: q <- 2q .. 2q + 2
            lo, hi = 2 * lo, 2 * hi + 2
        widen = _level_extent(config, level, tok.encoder_blocks)
        lo, hi = lo - widen, hi + widen
    lo, hi = lo - CONV, hi + CONV  # conv_in
    lo, hi = 2 * lo, 2 * hi + 1  # Haar patching: p <- frames 2p, 2p + 1
    half = front.n_fft // 2 - 1  # frame f weighs samples hop * f - n_fft / 2 + 1 .. hop * f + n_fft / 2 - 1
    return front.hop_length * lo - half, front.hop_length * hi + half


def decoder_influence(config: MelTokConfig) -> tuple[int, int]:
    """``(lo, hi)``: token column ``j`` influences decoded samples ``[S * j + lo, S * j + hi]``."""
    tok, voc = config.tokenizer, config.vocoder
    _require_time_local(config)
    extent = CONV + 2 * RESNET + tok.attention_radius  # conv_in, then the middle block
    lo, hi = -extent, extent
    for level in reversed(range(tok.num_levels)):
        widen = _level_extent(config, level, tok.decoder_blocks)
        lo, hi = lo - widen, hi + widen
        if level != 0:  # nearest x2 (p -> 2p, 2p + 1), then a 3x3 convolution
            lo, hi = 2 * lo - CONV, 2 * hi + 1 + CONV
    lo, hi = lo - CONV, hi + CONV  # conv_out
    lo, hi = 2 * lo, 2 * hi + 1  # inverse Haar
    widen = (KERNEL_SIZE // 2) * (1 + voc.num_layers)  # embedding conv and ConvNeXt depthwise convs
    lo, hi = lo - widen, hi + widen
    half = voc.n_fft // 2 - 1  # frame f overlap-adds onto hop * f - n_fft / 2 + 1 .. hop * f + n_fft / 2 - 1
    return voc.hop_length * lo - half, voc.hop_length * hi + half


def stream_contract(config: MelTokConfig) -> dict:
    """What a runtime needs to stream ``config`` exactly (the bundle manifest's ``streaming``):
    ``{"time_local": True, "encoder_dependency": [lo, hi], "decoder_influence": [lo, hi]}``, or
    ``{}`` for the reference architecture."""
    if not config.tokenizer.time_local:
        return {}
    return {"time_local": True, "encoder_dependency": list(encoder_dependency(config)),
            "decoder_influence": list(decoder_influence(config))}


def _require_time_local(config: MelTokConfig) -> None:
    if not config.tokenizer.time_local:
        raise ValueError(f"{config.name} is not time-local: GroupNorm and attention span the whole input, so its "
                         "receptive field is unbounded; build the model with time_local=True")
