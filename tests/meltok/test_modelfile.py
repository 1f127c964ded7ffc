"""Model files: safetensors + JSON config, atomic, hash-checked, never unpickled."""
import json

import numpy as np
import pytest
import torch

from meltok import MelTok
from meltok.modelfile import read_model_metadata
from meltok.config import PRESETS, MelTokConfig
from meltok_runtime.errors import ModelFileError


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_are_valid_and_round_trip_through_json(preset):
    config = PRESETS[preset]()
    assert MelTokConfig.from_json(config.to_json()) == config
    assert config.token_rows == 12


def test_paper_preset_parameter_counts():
    model = MelTok.from_config("paper")
    count = lambda module: sum(p.numel() for p in module.parameters()) / 1e6  # noqa: E731
    assert round(count(model.encoder), 1) == 36.7
    assert round(count(model.decoder), 1) == 52.2
    assert round(count(model.backbone), 1) == 13.0
    assert round(count(model.head), 2) == 0.53
    assert round(count(model), 1) == 102.9
    assert model.token_rate == pytest.approx(258.4, abs=0.1)


def test_convert_and_load_round_trip_is_bit_identical(official_tiny_dir, tmp_path, golden_io):
    official = MelTok.from_official(official_tiny_dir / "stage1.pt", official_tiny_dir / "stage2.ckpt")
    path = tmp_path / "tiny.safetensors"
    model_id = official.save(path)
    loaded = MelTok.load(path)
    assert loaded.model_id == model_id == official.model_id
    assert loaded.config == official.config
    tokens = loaded.encode(golden_io["audio"], pad=False)
    np.testing.assert_array_equal(tokens, official.encode(golden_io["audio"], pad=False))
    np.testing.assert_array_equal(loaded.decode(tokens), official.decode(tokens))
    assert read_model_metadata(path)["model_id"] == model_id


def test_model_file_refusals(tmp_path):
    model = MelTok.from_config("tiny")
    path = tmp_path / "m.safetensors"
    model.save(path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    (tmp_path / "flipped.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="do not match their recorded hash"):
        MelTok.load(tmp_path / "flipped.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError, match="not a meltok model file"):
        MelTok.load(tmp_path / "junk.safetensors")
    with pytest.raises(ModelFileError, match="does not exist"):
        MelTok.load(tmp_path / "missing.safetensors")
    (tmp_path / "truncated.safetensors").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelFileError):
        MelTok.load(tmp_path / "truncated.safetensors")


def test_newer_format_is_refused(tmp_path):
    from safetensors.torch import save_file

    metadata = {"format": "meltok-model", "format_version": "99", "config": MelTok.from_config("tiny").config.to_json()}
    save_file({"x": torch.zeros(1)}, str(tmp_path / "future.safetensors"), metadata=metadata)
    with pytest.raises(ModelFileError, match="upgrade meltok"):
        MelTok.load(tmp_path / "future.safetensors")


def test_save_is_atomic(tmp_path, monkeypatch):
    model = MelTok.from_config("tiny")
    path = tmp_path / "m.safetensors"
    model.save(path)
    before = path.read_bytes()
    import meltok.modelfile as modelfile

    def broken_save(state, filename, metadata):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(modelfile, "save_file", broken_save)
    with pytest.raises(OSError):
        model.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    assert json.loads(read_model_metadata(path)["config"])["name"] == "meltok-tiny"


def test_model_id_names_weights_and_architecture_not_file_names(official_tiny_dir, tmp_path):
    import dataclasses
    import shutil

    from click.testing import CliRunner

    from meltok.cli import main

    renamed = (shutil.copy(official_tiny_dir / "stage1.pt", tmp_path / "vae_00620000"),
               shutil.copy(official_tiny_dir / "stage2.ckpt", tmp_path / "last.ckpt"))
    direct = MelTok.from_official(official_tiny_dir / "stage1.pt", official_tiny_dir / "stage2.ckpt")
    assert MelTok.from_official(*renamed).model_id == direct.model_id
    result = CliRunner().invoke(main, ["convert", *map(str, renamed), "-o", str(tmp_path / "converted.safetensors")])
    assert result.exit_code == 0, result.output
    assert MelTok.load(tmp_path / "converted.safetensors").model_id == direct.model_id
    # the same weights under another architecture (a different mel scale, no new tensors) get another id
    config = dataclasses.replace(direct.config, frontend=dataclasses.replace(direct.config.frontend, mel_scale=4.0))
    other = MelTok(config)
    other.load_state_dict(direct.state_dict())
    assert other.save(tmp_path / "other.safetensors") != direct.model_id


def test_shipped_model_keeps_its_stored_id():
    """Files written before ids covered the architecture keep their id, so their token files stay decodable."""
    from meltok.default_model import DEFAULT_MODEL
    from meltok_runtime.codec import DEFAULT_BUNDLE
    from meltok_runtime.manifest import load_manifest

    if not DEFAULT_MODEL.is_file():
        pytest.skip("no default model is shipped in this checkout")
    model = MelTok.load()
    assert model.model_id == read_model_metadata(DEFAULT_MODEL)["model_id"] == "meltok-edge:e219538591c9"
    assert load_manifest(DEFAULT_BUNDLE, verify_files=False).model_id == model.model_id


def test_bad_model_configs_raise_config_errors():
    from meltok.config import FrontendConfig, resolve_config
    from meltok.errors import ConfigError

    with pytest.raises(ConfigError, match="hop_length"):
        FrontendConfig(hop_length=0)
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        resolve_config("huge")
    with pytest.raises(ConfigError, match="expected a MelTokConfig"):
        MelTok.from_config(3)


def test_resaved_shipped_model_keeps_its_id_and_decodes_the_bundles_token_files(tmp_path, real_clips):
    """A re-saved copy of the shipped model names the same weights: its id is unchanged, so a token file that the
    shipped bundle wrote decodes with the copy (``meltok decode`` and ``MelTok.decode``)."""
    from click.testing import CliRunner

    from meltok.cli import main
    from meltok.default_model import DEFAULT_MODEL
    from meltok_runtime import Codec
    from meltok_runtime.io.files import encode_file
    from meltok_runtime.io.tokenfile import read_tokens

    if not DEFAULT_MODEL.is_file():
        pytest.skip("no default model is shipped in this checkout")
    copy = tmp_path / "copy.safetensors"
    assert MelTok.load(DEFAULT_MODEL).save(copy) == "meltok-edge:e219538591c9"
    assert read_model_metadata(copy)["model_id"] == "meltok-edge:e219538591c9"
    again = tmp_path / "again.safetensors"
    assert MelTok.load(copy).save(again) == "meltok-edge:e219538591c9"

    import soundfile

    clip = tmp_path / "clip.wav"
    soundfile.write(clip, real_clips["music"][: 44100 * 2], 44100)
    tokens = tmp_path / "clip.mtok"
    with Codec.open() as codec:
        encode_file(codec, clip, tokens)
    result = CliRunner().invoke(main, ["decode", str(tokens), "-m", str(again), "-o", str(tmp_path / "out.wav")])
    assert result.exit_code == 0, result.output
    token_file = read_tokens(tokens)
    audio = MelTok.load(again).decode(token_file.tokens, num_samples=token_file.num_samples[0])
    assert audio.shape == (1, 44100 * 2)
    assert np.isfinite(audio).all() and np.abs(audio).max() > 1e-3


def test_changed_weights_get_a_new_id_on_save(tmp_path):
    first = MelTok.from_config("tiny").save(tmp_path / "a.safetensors")
    loaded = MelTok.load(tmp_path / "a.safetensors")
    assert loaded.save(tmp_path / "same.safetensors") == first
    with torch.no_grad():
        loaded.quantizer.embedding.weight[0, 0] += 1.0
    assert loaded.save(tmp_path / "b.safetensors") != first


def test_fields_added_after_config_version_1_change_no_id_while_at_their_default():
    """The canonical architecture leaves later fields out at their default (the rule in ``meltok.modelfile``)."""
    import dataclasses

    from meltok.config import VocoderConfig, edge
    from meltok.modelfile import canonical_architecture, model_id_of

    weights = "ab" * 32
    current = edge().to_dict()
    version1 = json.loads(json.dumps(current))  # the same config as config version 1 wrote it
    for later in ("time_local", "attention_radius"):
        del version1["tokenizer"][later]
    version1["vocoder"].pop("head", None)
    assert model_id_of(MelTokConfig.from_dict(version1), weights) == model_id_of(MelTokConfig.from_dict(current), weights)
    assert canonical_architecture(edge()) == json.dumps(version1, sort_keys=True)
    local = dict(current, tokenizer=dict(current["tokenizer"], time_local=True))
    assert model_id_of(MelTokConfig.from_dict(local), weights) != model_id_of(edge(), weights)

    # the vocoder head, added after config version 1: the reference head changes no id, another one does
    assert "head" in {field.name for field in dataclasses.fields(VocoderConfig)}
    phase_head = dataclasses.replace(edge(), vocoder=dataclasses.replace(edge().vocoder, head="phase_advance"))
    assert canonical_architecture(edge()) == json.dumps(version1, sort_keys=True)
    assert model_id_of(phase_head, weights) != model_id_of(edge(), weights)

    @dataclasses.dataclass(frozen=True)
    class VocoderWithGain(VocoderConfig):  # a field a later meltok might add, with its default
        output_gain: float = 1.0

    fields = {field.name: getattr(edge().vocoder, field.name) for field in dataclasses.fields(VocoderConfig)}
    with_gain = dataclasses.replace(edge(), vocoder=VocoderWithGain(**fields))
    other_gain = dataclasses.replace(edge(), vocoder=VocoderWithGain(**fields, output_gain=0.5))
    assert model_id_of(with_gain, weights) == model_id_of(edge(), weights)
    assert model_id_of(other_gain, weights) != model_id_of(edge(), weights)


def test_shipped_model_config_is_its_canonical_architecture():
    """The shipped file's stored config (config version 1) is exactly the canonical form of what it loads as."""
    from meltok.default_model import DEFAULT_MODEL
    from meltok.modelfile import canonical_architecture

    if not DEFAULT_MODEL.is_file():
        pytest.skip("no default model is shipped in this checkout")
    stored = read_model_metadata(DEFAULT_MODEL)["config"]
    assert canonical_architecture(MelTokConfig.from_json(stored)) == stored
