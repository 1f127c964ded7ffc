"""Other variants of the reference architecture, as official-format fixtures built by shape."""
import argparse
import dataclasses

import numpy as np
import pytest
import torch

from meltok import MelTok
from meltok.config import MelTokConfig, TokenizerConfig, VocoderConfig
from meltok_runtime.errors import ModelFileError
from meltok_runtime.lengths import decoded_length, token_columns

from .official_format import write_official_checkpoints

VARIANTS = {
    "attention-12-24-48": MelTokConfig(
        name="v1", tokenizer=TokenizerConfig(channels=32, channels_mult=(1, 2, 2), encoder_blocks=1,
                                             decoder_blocks=2, attn_resolutions=(12, 24, 48), z_channels=32,
                                             embedding_dim=8, codebook_size=256),
        vocoder=VocoderConfig(dim=48, intermediate_dim=96, num_layers=3)),
    "wide-no-level-attention": MelTokConfig(
        name="v2", tokenizer=TokenizerConfig(channels=64, channels_mult=(1, 2, 3), encoder_blocks=2,
                                             decoder_blocks=1, attn_resolutions=(), z_channels=64,
                                             embedding_dim=32, codebook_size=2048),
        vocoder=VocoderConfig(dim=32, intermediate_dim=64, num_layers=1)),
    "two-levels-attention-24": MelTokConfig(
        name="v3", tokenizer=TokenizerConfig(channels=32, channels_mult=(2, 2), encoder_blocks=1, decoder_blocks=1,
                                             attn_resolutions=(24,), z_channels=32, embedding_dim=4,
                                             codebook_size=64),
        vocoder=VocoderConfig(dim=32, intermediate_dim=48, num_layers=2)),
}


def randomised(config):
    torch.manual_seed(0)
    model = MelTok(config)
    with torch.no_grad():  # spread the codebook so the tokens are not all one code
        model.quantizer.embedding.weight.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_loads_with_inferred_architecture(name, tmp_path, real_clips):
    original = randomised(VARIANTS[name])
    stage1, stage2 = write_official_checkpoints(original, tmp_path)
    loaded = MelTok.from_official(stage1, stage2)
    expected = dataclasses.replace(original.config, name=loaded.config.name)
    assert loaded.config.tokenizer == expected.tokenizer
    assert loaded.config.vocoder == expected.vocoder
    audio = real_clips["speech"][: 44100 + 12345]
    tokens = loaded.encode(audio, pad=False)
    np.testing.assert_array_equal(tokens, original.encode(audio, pad=False))
    np.testing.assert_array_equal(loaded.decode(tokens), original.decode(tokens))


@pytest.mark.parametrize("length", [1536, 1537, 2047, 2048, 2049, 22050, 44101])
def test_odd_lengths_follow_the_length_rule(length, real_clips):
    model = randomised(VARIANTS["two-levels-attention-24"])
    audio = real_clips["music"][:length]
    tokens = model.encode(audio, pad=False)
    compression = model.config.tokenizer.compression
    assert compression == 4
    assert tokens.shape == (1, 96 // compression, token_columns(length, 256, compression))
    assert model.decode(tokens).shape == (1, decoded_length(tokens.shape[-1], 256, compression))


def test_paper_layout_length_rule_and_padding(real_clips):
    model = MelTok.from_config("tiny")
    for length in (100, 1536, 44100, 44101):
        tokens = model.encode(real_clips["effects"][:length])
        assert tokens.shape[1] == 12
        assert decoded_length(tokens.shape[-1], 256, 8) >= length
        assert model.decode(tokens, num_samples=length).shape == (1, length)
    assert token_columns(44100, 256, 8) == 21  # the fixture's 173 frames -> 21 columns


def test_unknown_and_missing_keys_are_named(tmp_path):
    model = randomised(VARIANTS["two-levels-attention-24"])
    stage1, stage2 = write_official_checkpoints(model, tmp_path)
    state = torch.load(stage2, weights_only=True)
    state["state_dict"]["mystery.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.ckpt")
    with pytest.raises(ModelFileError, match="mystery.weight"):
        MelTok.from_official(stage1, tmp_path / "extra.ckpt")
    del state["state_dict"]["mystery.weight"]
    del state["state_dict"]["backbone.convnext.0.pwconv2.bias"]
    torch.save(state, tmp_path / "missing.ckpt")
    with pytest.raises(ModelFileError, match="backbone.convnext.0.pwconv2.bias"):
        MelTok.from_official(stage1, tmp_path / "missing.ckpt")


def test_pickled_objects_need_explicit_opt_in(tmp_path):
    model = randomised(VARIANTS["two-levels-attention-24"])
    stage1, stage2 = write_official_checkpoints(model, tmp_path)
    state = torch.load(stage2, weights_only=True)
    state["hyper_parameters"] = argparse.Namespace(sample_rate=44100)  # an object: not weights-only
    torch.save(state, tmp_path / "pickled.ckpt")
    with pytest.raises(ModelFileError, match="allow_pickle=True"):
        MelTok.from_official(stage1, tmp_path / "pickled.ckpt")
