"""The time-local variant: its receptive field is finite and computed exactly from the config; its
streams equal offline results on real audio; zero-padding in a batch changes only the columns whose
receptive field reaches the padding; it trains. The default stays the reference architecture (the
golden tests in test_golden.py check that it is unchanged)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from meltok import MelTok
from meltok.config import TokenizerConfig, resolve_config
from meltok.receptive_field import decoder_influence, encoder_dependency, stream_contract
from meltok.tokenizer import AttnBlock, ColumnGroupNorm
from meltok_runtime.lengths import padded_length
from tests.runtime.test_streaming import run_decoder, run_encoder

COLUMN = 2048


def test_default_is_the_reference_architecture():
    assert TokenizerConfig().time_local is False
    model = MelTok.from_config("tiny")
    assert not any(isinstance(m, ColumnGroupNorm) for m in model.modules())
    assert all(m.radius is None for m in model.modules() if isinstance(m, AttnBlock))
    assert stream_contract(model.config) == {}
    with pytest.raises(ValueError, match="not time-local"):
        encoder_dependency(model.config)


def test_local_preset_swaps_only_norms_and_attention(tiny_local_model):
    reference = MelTok.from_config("tiny")
    assert tiny_local_model.config.name == "meltok-tiny-local" and tiny_local_model.config.tokenizer.time_local
    assert tiny_local_model.state_dict().keys() == reference.state_dict().keys()  # weights load either way
    norms = [m for m in tiny_local_model.encoder.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(isinstance(m, ColumnGroupNorm) for m in norms)
    radii = {m.radius for m in tiny_local_model.modules() if isinstance(m, AttnBlock)}
    assert radii == {tiny_local_model.config.tokenizer.attention_radius}
    assert resolve_config(tiny_local_model.config.to_dict()) == tiny_local_model.config
    with pytest.raises(ValueError, match="attention_radius"):
        TokenizerConfig(time_local=True, attention_radius=-1)


def test_encoder_receptive_field_is_exactly_the_computed_span(tiny_local_model):
    """Nudging one sample changes exactly the latent columns whose computed span contains it."""
    model = tiny_local_model
    lo, hi = encoder_dependency(model.config)
    audio = 0.1 * torch.randn(1, 60 * COLUMN - 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model.latent(model.log_mel(audio))
        for sample in (30 * COLUMN, 30 * COLUMN + 1000, 31 * COLUMN - 1):
            nudged = audio.clone()
            nudged[0, sample] += 0.5
            changed = torch.nonzero((model.latent(model.log_mel(nudged)) - base).abs().amax((0, 1, 2)))
            expected = (math.ceil((sample - hi) / COLUMN), math.floor((sample - lo) / COLUMN))
            assert (int(changed.min()), int(changed.max())) == expected


def test_decoder_receptive_field_bounds_the_change(tiny_local_model):
    """Changing one column changes decoded samples only inside its computed span, and nearly all of it."""
    lo, hi = decoder_influence(tiny_local_model.config)
    tokens = torch.randint(0, tiny_local_model.codebook_size, (1, 12, 60), generator=torch.Generator().manual_seed(2))
    changed_tokens = tokens.clone()
    changed_tokens[0, :, 30] = (changed_tokens[0, :, 30] + 7) % tiny_local_model.codebook_size
    with torch.no_grad():
        diff = (tiny_local_model.detokenize(changed_tokens) - tiny_local_model.detokenize(tokens))[0].abs()
    changed = torch.nonzero(diff).flatten() - 30 * COLUMN
    assert lo <= int(changed.min()) < lo + 256 and hi - 256 < int(changed.max()) <= hi  # Hann ends are ~0


def test_streams_equal_offline_on_real_audio(tiny_local_model, real_clips):
    audio = real_clips["speech"][:3 * 44100]
    tokens = tiny_local_model.encode(audio)[0]
    encoder = tiny_local_model.stream_encoder(lookahead_seconds=0.1)
    assert encoder.exact and encoder.latency_seconds > 0.1  # the receptive field needs more than asked
    sizes = [0, 1, 700, 30000, 2047, 0, 40000]  # odd sizes, empty pushes, windows far from the column grid
    np.testing.assert_array_equal(run_encoder(encoder, audio, sizes), tokens)

    offline = tiny_local_model.decode(tokens)[0]
    decoder = tiny_local_model.stream_decoder(lookahead_seconds=0.0)
    streamed, _ = run_decoder(decoder, tokens, [0, 1, 3, 20, 0, 17, 2])
    assert decoder.exact and streamed.shape == offline.shape
    np.testing.assert_allclose(streamed, offline, rtol=0, atol=1e-5 * np.abs(offline).max())


def test_zero_padding_in_a_batch_changes_only_columns_that_reach_it(tiny_local_model, real_clips):
    short, long = real_clips["effects"][:2 * 44100], real_clips["music"][:3 * 44100]
    alone = tiny_local_model.encode(short)[0]
    batch = np.stack([np.pad(short, (0, len(long) - len(short))), long])
    together = tiny_local_model.encode(batch)[0]
    lo, hi = encoder_dependency(tiny_local_model.config)
    padded = padded_length(len(short), 256, 8)  # encode(pad=True) pads with zeros to this many samples
    untouched = (padded - hi - 1) // COLUMN + 1  # columns whose span ends before the padding
    assert untouched > 0.5 * alone.shape[1]
    np.testing.assert_array_equal(together[:, :untouched], alone[:, :untouched])
    # decoding: a batch padded with token columns changes no sample that the padding cannot reach
    decoded = tiny_local_model.decode(alone)[0]
    extra = together.shape[1] - alone.shape[1]
    with_padding = tiny_local_model.decode(np.stack([np.pad(alone, ((0, 0), (0, extra))), together]))[0]
    reach = alone.shape[1] * COLUMN + decoder_influence(tiny_local_model.config)[0]
    np.testing.assert_allclose(with_padding[:reach], decoded[:reach], rtol=0, atol=1e-5 * np.abs(decoded).max())


def test_stage1_trains_the_local_variant(real_clips):
    from meltok.train.codebook import CodebookMonitor
    from meltok.train.config import TrainConfig
    from meltok.train.stage1 import Stage1

    torch.manual_seed(0)
    crop = 12032
    batch = torch.from_numpy(np.stack([real_clips["music"][:crop], real_clips["speech"][44100:44100 + crop]]))
    config = TrainConfig(preset="tiny-local", steps=6, batch_size=2, crop_samples=crop, log_every=1,
                         val_every=1000, checkpoint_every=1000, val_crops=2, prefetch=2)
    stage = Stage1(MelTok.from_config("tiny-local"), config, torch.device("cpu"), CodebookMonitor(1024, 100))
    stage.train_mode()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as tests/meltok/test_train.py: on a busy 2-core machine one thread is far faster
    try:
        losses = [float(stage.train_step(batch, step)["train/total"]) for step in range(1, 9)]
    finally:
        torch.set_num_threads(threads)
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0]
