"""The ``mel_inversion`` vocoder head: a model without a neural vocoder whose decoder's log-mel becomes audio
by the runtime's ``MelInverter``; built from any model (``with_vocoder_head``, ``meltok model mel-inversion``),
saved and loaded with its own id, decoded in windows with the running phase carried, never trained in stage 2."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from meltok import MelTok
from meltok.cli import main
from meltok.config import MelTokConfig, head_variant, tiny
from meltok.errors import ConfigError, TrainConfigError
from meltok.modelfile import canonical_architecture, model_id_of, read_model_metadata, weights_hash
from meltok.train.config import TrainConfig
from meltok.vocoder import MelInversionHead
from meltok_runtime.io.tokenfile import read_tokens
from meltok_runtime.mel_inversion import MelInverter


@pytest.fixture(scope="module")
def source() -> MelTok:
    torch.manual_seed(0)
    model = MelTok.from_config("tiny")
    torch.nn.init.normal_(model.quantizer.embedding.weight, 0, 0.5)
    return model


def test_built_from_any_model_keeps_the_tokenizer_and_drops_the_vocoder(source):
    model = source.with_vocoder_head("mel_inversion")
    assert model.config.name == "meltok-tiny-mel-inversion" and model.config.vocoder.head == "mel_inversion"
    assert isinstance(model.head, MelInversionHead) and isinstance(model.backbone, torch.nn.Identity)
    state = model.state_dict()
    assert not any(key.startswith(("head.", "backbone.")) for key in state)
    assert state.keys() == {key for key in source.state_dict() if not key.startswith(("head.", "backbone."))}
    assert all(torch.equal(value, source.state_dict()[key]) for key, value in state.items())
    advance = source.with_vocoder_head("phase_advance").with_vocoder_head("mel_inversion")  # from any head
    assert advance.config.name == "meltok-tiny-phase-advance-mel-inversion"
    assert model.with_vocoder_head("mel_inversion") is model
    with pytest.raises(ConfigError, match="cannot initialise"):
        model.with_vocoder_head("phase_advance")
    inverter = model.mel_inverter
    frontend = model.config.frontend
    assert (inverter.n_fft, inverter.hop, inverter.bins, inverter.log_floor) == (
        frontend.n_fft, frontend.hop_length, frontend.n_fft // 2 + 1, frontend.log_floor)
    assert source.mel_inverter is None


def test_decode_features_unchanged_and_vocode_is_the_inverter(source, real_clips):
    model = source.with_vocoder_head("mel_inversion")
    audio = torch.from_numpy(real_clips["speech"][None, :44100])
    with torch.no_grad():
        tokens = model.tokenize(audio)
        torch.testing.assert_close(tokens, source.tokenize(audio), rtol=0, atol=0)
        features = model.decode_features(model.quantizer.lookup(tokens))
        torch.testing.assert_close(features, source.decode_features(source.quantizer.lookup(tokens)), rtol=0, atol=0)
        decoded = model.detokenize(tokens)
    expected, _ = MelInverter()(features.numpy())
    np.testing.assert_array_equal(decoded.numpy(), expected)
    assert decoded.shape == (1, (8 * tokens.shape[-1] - 1) * 256)


def test_ids_new_head_changes_the_id_and_old_ids_stay(source):
    weights = "cd" * 32
    config = tiny()
    inversion = head_variant(config, "mel_inversion")
    assert json.loads(canonical_architecture(inversion))["vocoder"]["head"] == "mel_inversion"
    assert "head" not in json.loads(canonical_architecture(config))["vocoder"]  # reference ids unchanged
    same_name = dataclasses.replace(inversion, name=config.name)
    assert model_id_of(same_name, weights) != model_id_of(config, weights)
    assert MelTokConfig.from_json(inversion.to_json()) == inversion


def test_model_file_round_trip(source, tmp_path):
    model = source.with_vocoder_head("mel_inversion")
    path = tmp_path / "m.safetensors"
    model_id = model.save(path)
    assert model_id == model_id_of(model.config, weights_hash(model.state_dict()))
    loaded = MelTok.load(path)
    assert loaded.model_id == model_id and loaded.config == model.config
    assert isinstance(loaded.head, MelInversionHead)
    assert json.loads(read_model_metadata(path)["config"])["vocoder"]["head"] == "mel_inversion"
    assert loaded.save(tmp_path / "again.safetensors") == model_id


def test_windowed_decode_carries_the_running_phase(source, real_clips):
    """The torch model decodes as the runtime does: its decode graph gives the log-mel and the pipeline's
    ``MelDecode`` inverts it window by window, handing on the running phase before the next window."""
    model = source.with_vocoder_head("mel_inversion")
    tokens = model.encode(real_clips["music"][:3 * 44100])
    windowed = model.decode(tokens, window_seconds=1.0, context_seconds=0.25)  # 65 columns in 22-column windows
    whole = model.decode(tokens)
    assert windowed.shape == whole.shape and np.isfinite(windowed).all()
    step = model._decode_step()
    assert step.initial_state(2).shape == (2, 513)
    columns = 10
    mel = model._decode_graph(tokens[..., :columns])
    audio, state = step(tokens[..., :columns], step.initial_state(1), carry=4)
    expected_audio, running = model.mel_inverter(mel)
    np.testing.assert_array_equal(audio, expected_audio)
    np.testing.assert_array_equal(state, running[..., 4 * 8 - 1])


def test_stage2_refuses_a_mel_inversion_model(source, tmp_path):
    with pytest.raises(TrainConfigError, match="no weights to train"):
        TrainConfig().replace(**{"stage2.head": "mel_inversion"})
    from meltok.train.trainer import Trainer

    init = tmp_path / "init.safetensors"
    source.with_vocoder_head("mel_inversion").save(init)
    config = TrainConfig().replace(stage="stage2", preset="tiny", init=str(init))
    with pytest.raises(TrainConfigError, match="stage 2 has nothing to train"):
        Trainer(config, tmp_path / "no-corpus", tmp_path / "run", device="cpu")


@pytest.fixture(scope="module")
def model_path(source, tmp_path_factory):
    """``meltok model mel-inversion`` run on a model file: the new model file."""
    folder = tmp_path_factory.mktemp("mel-model")
    stage1 = folder / "stage1.safetensors"
    source.save(stage1)
    result = CliRunner().invoke(main, ["model", "mel-inversion", str(stage1), "-o", str(folder / "mel.safetensors")])
    assert result.exit_code == 0, result.output
    assert "meltok-tiny-mel-inversion:" in result.output
    return folder / "mel.safetensors"


def test_command_line_makes_a_model_that_encodes_and_decodes(model_path, tmp_path, real_clips):
    """``meltok model mel-inversion`` from a model file, then ``meltok encode``/``decode`` with it."""
    import soundfile as sf

    runner = CliRunner()
    model = MelTok.load(model_path)
    assert model.config.vocoder.head == "mel_inversion"

    clip = tmp_path / "clip.wav"
    sf.write(clip, real_clips["speech"][:44100], 44100, subtype="FLOAT")
    tokens, decoded = tmp_path / "c.mtok", tmp_path / "c.wav"
    assert runner.invoke(main, ["encode", str(clip), "-m", str(model_path), "-o", str(tokens)]).exit_code == 0
    result = runner.invoke(main, ["decode", str(tokens), "-m", str(model_path), "-o", str(decoded)])
    assert result.exit_code == 0, result.output
    token_file = read_tokens(tokens)
    assert token_file.model_id == model.model_id
    written, _ = sf.read(decoded, dtype="float32")
    np.testing.assert_array_equal(written, model.decode(token_file.tokens, token_file.num_samples[0])[0])


def test_eval_and_spectrograms_run_the_model(model_path, tmp_path, real_clips):
    import soundfile as sf

    runner = CliRunner()
    clips = tmp_path / "clips"
    clips.mkdir()
    sf.write(clips / "speech.wav", real_clips["speech"][:44100], 44100, subtype="FLOAT")
    result = runner.invoke(main, ["eval", str(model_path), str(clips), "-o", str(tmp_path / "report"), "--no-visqol",
                                  "--no-tones"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["spectrograms", str(model_path), str(clips / "speech.wav"), "-o",
                                  str(tmp_path / "spectrograms")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "spectrograms" / "speech.png").is_file()
