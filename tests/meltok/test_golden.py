"""The official-tiny fixture: checkpoints and tensors produced by the reference implementation."""
import numpy as np
import pytest
import torch

from meltok import MelTok
from meltok.tokenizer import Decoder2d

# Tolerances: the fixture's README gives the reference's own spread (float64 recompute: mel 2.9e-5,
# mel_hat 5.8e-5, audio_hat 1.6e-6). Our conv STFT (no FFT) sums 1024 float32 products per bin, and
# ln() amplifies that round-off in the quietest bins: measured 1.6e-4 on log-mel (|value| up to 16).
MEL_ATOL = 3e-4
MEL_HAT_ATOL = 2e-4
AUDIO_ATOL = 1e-4


@pytest.fixture(scope="module")
def official(official_tiny_dir):
    return MelTok.from_official(official_tiny_dir / "stage1.pt", official_tiny_dir / "stage2.ckpt")


def test_architecture_is_inferred(official):
    tok, voc = official.config.tokenizer, official.config.vocoder
    assert (tok.channels, tok.channels_mult, tok.encoder_blocks, tok.decoder_blocks) == (32, (2, 4, 4), 2, 3)
    assert (tok.z_channels, tok.embedding_dim, tok.codebook_size, tok.attn_resolutions) == (64, 16, 512, (12,))
    assert (voc.dim, voc.intermediate_dim, voc.num_layers) == (64, 192, 2)


def test_every_stage_matches_reference(official, golden_io):
    with torch.no_grad():
        mel = official.log_mel(torch.from_numpy(golden_io["audio"]))
        latent = official.latent(torch.from_numpy(golden_io["mel"]))
        tokens = official.quantizer.tokenize(latent)
        mel_hat = official.decode_features(torch.from_numpy(golden_io["z_q"]))
        audio_hat = official.vocode(torch.from_numpy(golden_io["mel_hat"]))
    assert np.abs(mel.numpy() - golden_io["mel"]).max() < MEL_ATOL
    assert np.abs(latent.numpy() - golden_io["latent"]).max() < 1e-5
    np.testing.assert_array_equal(tokens.numpy(), golden_io["tokens"])
    assert np.abs(mel_hat.numpy() - golden_io["mel_hat"]).max() < MEL_HAT_ATOL
    assert audio_hat.shape == golden_io["audio_hat"].shape
    assert np.abs(audio_hat.numpy() - golden_io["audio_hat"]).max() < AUDIO_ATOL


def test_public_api_end_to_end_matches_reference(official, golden_io):
    tokens = official.encode(golden_io["audio"], pad=False)
    assert isinstance(tokens, np.ndarray) and tokens.dtype == np.int64
    np.testing.assert_array_equal(tokens, golden_io["tokens"])
    audio = official.decode(tokens)
    assert audio.dtype == np.float32 and audio.shape == golden_io["audio_hat"].shape
    assert np.abs(audio - golden_io["audio_hat"]).max() < AUDIO_ATOL


def test_stage1_decoder_matches_reference(official_tiny_dir, official, golden_io):
    stage1 = torch.load(official_tiny_dir / "stage1.pt", weights_only=True)["encoder"]
    decoder = Decoder2d(official.config.tokenizer)
    decoder.load_state_dict({k[len("decoder."):]: v for k, v in stage1.items() if k.startswith("decoder.")})
    post_quant = torch.nn.Conv2d(16, 64, 1)
    post_quant.load_state_dict({k.split(".")[-1]: v for k, v in stage1.items() if k.startswith("post_quant_conv.")})
    with torch.no_grad():
        recon = decoder(post_quant(torch.from_numpy(golden_io["z_q"])))[:, 0] * 5.0
    assert np.abs(recon.numpy() - golden_io["stage1_recon"]).max() < MEL_HAT_ATOL


def test_torch_input_gives_torch_output(official, golden_io):
    tokens = official.encode(torch.from_numpy(golden_io["audio"][0]), pad=False)
    assert isinstance(tokens, torch.Tensor)
    assert torch.equal(tokens, torch.from_numpy(golden_io["tokens"]))
