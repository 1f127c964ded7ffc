"""Training on CPU with the tiny preset and a tiny corpus of the shipped real clips: losses go
down, stage 2 keeps the tokenizer frozen, resume equals a straight run, checkpoints are sharded
and atomic, dead codes are revived, the perceptual losses load, and the CLI runs."""
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from meltok import MelTok
from meltok.train import run_checkpoint as ckpt
from meltok.cli import main as meltok_cli
from meltok.train.codebook import CodebookMonitor, histogram_stats, reset_adam_rows, revive_dead_codes
from meltok.errors import TrainConfigError
from meltok.train.config import TrainConfig
from meltok.train.corpus import CorpusReader
from meltok.train.corpus.manifest import MANIFEST_FORMAT, MANIFEST_VERSION
from meltok.train.data import CropBatches, fixed_crops
from meltok.train.discriminators import Discriminators
from meltok.train.losses import LevelLoss, VGG19Features, build_perceptual
from meltok.train.scalar_log import read_scalars
from meltok.train.stage1 import Stage1
from meltok.train.stage2 import Stage2
from meltok.train.trainer import Trainer
from meltok_runtime.errors import ModelFileError

DATA = Path(__file__).resolve().parents[1] / "data"
CROP = 12032  # (6 * 8 - 1) * 256: 48 frames, 6 token columns; the stage-2 output has the same length
SMALL_DISCS = {"stage2.mpd_channels": (4, 8, 8, 8, 8), "stage2.mrd_channels": 4}


@pytest.fixture(autouse=True, scope="module")
def _cpu_settings():
    """One thread: the tiny models gain nothing from two, and on a busy shared machine two
    spinning OpenMP threads made steps up to 100x slower. Denormals flushed as the Trainer does
    on CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A two-split corpus in the ``meltok data build`` layout: music + speech (train), effects (valid)."""
    root = tmp_path_factory.mktemp("corpus")
    files = []
    for split, names in (("train", ["music.flac", "speech.flac"]), ("valid", ["effects.flac"])):
        (root / split).mkdir()
        pieces, offset = [], 0
        for name in names:
            audio, rate = sf.read(DATA / name, dtype="float32")
            assert rate == 44100
            pieces.append(audio.mean(axis=1))
            files.append({"split": split, "excluded": None, "relpath": name, "segments": [
                {"shard": f"{split}/shard-00000.flac", "offset": offset, "length": len(pieces[-1])}]})
            offset += len(pieces[-1])
        sf.write(root / split / "shard-00000.flac", np.concatenate(pieces), 44100, subtype="PCM_16")
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "sample_rate": 44100, "files": files}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def fixed_batch(corpus) -> torch.Tensor:
    return torch.from_numpy(fixed_crops(CorpusReader(corpus, "train"), 2, CROP, seed=3))


def tiny_config(**changes) -> TrainConfig:
    base = TrainConfig(preset="tiny", steps=6, batch_size=2, crop_samples=CROP, log_every=1, val_every=1000,
                       checkpoint_every=1000, val_crops=2, prefetch=2)
    return base.replace(**{**SMALL_DISCS, **changes})


def overfit(stage, batch, steps=20):
    stage.train_mode()
    return [{k: float(v) for k, v in stage.train_step(batch, step).items()} for step in range(1, steps + 1)]


# ----------------------------------------------------------------------------- config
def test_config_round_trip_overrides_and_errors(tmp_path):
    config = TrainConfig()
    assert (config.stage1.lr, config.stage1.betas, config.stage1.lr_decay) == (4e-4, (0.9, 0.999), 0.999)
    assert (config.stage1.mel_weight, config.stage1.vq_weight, config.stage1.perceptual_weight) == (5, 0.25, 0.5)
    assert (config.stage2.lr, config.stage2.betas, config.stage2.mel_weight, config.stage2.mrd_weight) == \
        (5e-4, (0.8, 0.9), 45, 5)
    assert (config.crop_samples, config.batch_size, config.stage2.mpd_periods) == (24320, 64, (2, 3, 5, 7, 11))
    changed = config.replace(**{"steps": "10", "stage2.gan": "false", "stage2.mpd_periods": "2,3",
                                "stage1.lr": "1e-4", "max_minutes": 9, "vgg_weights": "/x/vgg.pth"})
    assert (changed.steps, changed.stage2.gan, changed.stage2.mpd_periods, changed.stage1.lr) == \
        (10, False, (2, 3), 1e-4)
    assert TrainConfig.from_json(changed.to_json()) == changed
    path = tmp_path / "partial.json"
    path.write_text(json.dumps({"preset": "edge", "stage2": {"gan": False}}))
    loaded = TrainConfig.load(path)
    assert loaded.preset == "edge" and not loaded.stage2.gan and loaded.stage2.lr == 5e-4
    for bad in ({"stepz": 3}, {"stage1.nope": 1}, {"steps": "many"}, {"stage2.gan": "maybe"}, {"steps": 0},
                {"stage1.perceptual": "vgg19"}, {"preset": "huge"}):
        with pytest.raises(TrainConfigError):
            config.replace(**bad)
    with pytest.raises(TrainConfigError):
        TrainConfig.from_dict({"stage1": {"lr": -1}})


# ----------------------------------------------------------------------------- stages
def test_stage1_overfits_one_batch(fixed_batch):
    torch.manual_seed(0)
    stage = Stage1(MelTok.from_config("tiny"), tiny_config(), torch.device("cpu"), CodebookMonitor(1024, 100))
    assert stage.resolved == {"stage1.perceptual": "mel-gradient"}
    history = overfit(stage, fixed_batch)
    first, last = history[0], history[-1]
    assert last["train/total"] < 0.6 * first["train/total"]
    assert last["train/mel_l1"] < 0.6 * first["train/mel_l1"]
    assert all(np.isfinite(h["train/vq"]) and h["train/perceptual"] >= 0 for h in history)
    scalars, _ = stage.validate(fixed_batch)
    bands = [float(scalars[f"val/mel_l1_{name}"]) for name in ("low", "mid", "high")]
    assert all(value > 0 for value in bands)
    assert float(scalars["val/mel_l1"]) == pytest.approx(np.mean(bands), rel=1e-4)  # 96 rows in equal thirds


def test_stage1_decoder_only_keeps_every_token_and_learns_the_mel(fixed_batch):
    """``stage1.train=decoder``: encoder, quant_conv and codebook unchanged (so every token is), the
    decoder's mel error falls, and revival never runs even when due."""
    torch.manual_seed(0)
    model = MelTok.from_config("tiny")
    tokens_before = model.tokenize(fixed_batch).clone()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("encoder.", "quant_conv.", "quantizer."))}
    decoder_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("decoder.")}
    config = tiny_config(**{"stage1.train": "decoder", "stage1.revive_every": 1})
    stage = Stage1(model, config, torch.device("cpu"), CodebookMonitor(1024, 100))
    history = overfit(stage, fixed_batch)
    assert history[-1]["train/mel_l1"] < 0.6 * history[0]["train/mel_l1"]
    assert "codebook/revived" not in history[-1]
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert any(not torch.equal(state[k], v) for k, v in decoder_before.items())
    assert torch.equal(model.eval().tokenize(fixed_batch), tokens_before)
    with pytest.raises(TrainConfigError, match="stage1.train must be one of"):
        tiny_config(**{"stage1.train": "encoder"})


def test_stage1_level_term_is_the_block_level_loss_of_the_log_mels_and_falls(fixed_batch):
    """``stage1.level_weight``: the loss adds ``LevelLoss.blocks`` of the decoder's log-mel against the
    input's (natural-log units), training lowers it; validation reports it whatever the weight."""
    torch.manual_seed(0)
    model = MelTok.from_config("tiny")
    config = tiny_config(**{"stage1.train": "decoder", "stage1.level_weight": 2.0})
    stage = Stage1(model, config, torch.device("cpu"), CodebookMonitor(1024, 100))
    stage.train_mode()
    with torch.no_grad():
        recon, target, _, _, _ = stage.net(fixed_batch)
    scale = model.config.frontend.mel_scale
    expected = LevelLoss().blocks(recon * scale, target * scale)
    first = {k: float(v) for k, v in stage.train_step(fixed_batch, 1).items()}
    assert first["train/level"] == pytest.approx(float(expected), rel=1e-4)
    weights = config.stage1
    assert first["train/total"] == pytest.approx(
        weights.mel_weight * first["train/mel_l1"] / scale + weights.vq_weight * first["train/vq"]
        + weights.perceptual_weight * first["train/perceptual"] + 2.0 * first["train/level"], rel=1e-4)
    history = overfit(stage, fixed_batch)
    assert history[-1]["train/level"] < 0.7 * first["train/level"]
    plain = Stage1(MelTok.from_config("tiny"), tiny_config(), torch.device("cpu"), CodebookMonitor(1024, 100))
    assert "train/level" not in overfit(plain, fixed_batch, steps=1)[0]
    assert float(plain.validate(fixed_batch)[0]["val/level"]) > 0
    with pytest.raises(TrainConfigError, match="stage1 loss weights must be >= 0"):
        tiny_config(**{"stage1.level_weight": -1})


@pytest.mark.parametrize("gan", [True, False])
def test_stage2_overfits_one_batch_and_freezes_the_tokenizer(fixed_batch, gan):
    torch.manual_seed(0)
    model = MelTok.from_config("tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = tiny_config(**{"stage2.gan": gan, "stage2.gain_db_min": 0.0})  # the same batch at every step
    stage = Stage2(model, config, torch.device("cpu"), CodebookMonitor(1024, 100))
    history = overfit(stage, fixed_batch, steps=20 if gan else 12)
    assert history[-1]["train/mel_l1"] < 0.9 * history[0]["train/mel_l1"]
    assert history[-1]["train/total"] < history[0]["train/total"]
    assert ("train/disc" in history[0]) == gan and ("train/mrstft" in history[0]) == (not gan)
    for key, value in model.state_dict().items():
        frozen = key.startswith(("encoder.", "quant_conv.", "quantizer."))
        if frozen:
            assert torch.equal(value, before[key]), key
    changed = [k for k in ("decoder.conv_in.weight", "post_quant_conv.weight", "backbone.embed.weight",
                           "head.out.weight") if not torch.equal(model.state_dict()[k], before[k])]
    assert len(changed) == 4
    assert ("discriminators" in stage.modules) == gan


def test_stage2_random_gain_and_validation_logs_buzz_and_level(fixed_batch):
    torch.manual_seed(0)
    model = MelTok.from_config("tiny")
    stage = Stage2(model, tiny_config(**{"stage2.gan": False, "stage2.gain_db_min": -20.0}), torch.device("cpu"),
                   CodebookMonitor(1024, 100))
    gains = [20 * torch.log10(stage._random_gain(fixed_batch).abs().amax(-1) / fixed_batch.abs().amax(-1))
             for _ in range(5)]
    gains = torch.cat(gains)
    assert float(gains.min()) >= -20.0 and float(gains.max()) <= 0.0 and float(gains.std()) > 1.0
    scalars, _ = stage.validate(fixed_batch)
    for tag in ("val/mel_l1", "val/ip", "val/gd", "val/td", "val/complex_stft", "val/level", "val/buzz_db",
                "val/level_db"):
        assert math.isfinite(float(scalars[tag])), tag
    assert float(scalars["val/buzz_db"]) > 3.0  # an untrained ISTFT head buzzes


def test_discriminators_shapes():
    discs = Discriminators((2, 3, 5, 7, 11), (4, 8, 8, 8, 8), (2048, 1024, 512), 4)
    real, fake = torch.randn(2, CROP), torch.randn(2, CROP)
    out = discs(real, fake)
    assert len(out["mpd"][0]) == 5 and len(out["mrd"][0]) == 3
    for scores_real, scores_fake in zip(out["mpd"][0] + out["mrd"][0], out["mpd"][1] + out["mrd"][1]):
        assert scores_real.shape == scores_fake.shape and scores_real.shape[0] == 2
    assert [len(maps) for maps in out["mpd"][2]] == [5] * 5 and [len(maps) for maps in out["mrd"][2]] == [6] * 3
    names = [name for name, _ in discs.named_parameters()]
    assert all("parametrizations.weight.original" in n for n in names if n.endswith("weight.original")
               ) and sum("parametrizations" in n for n in names) == 5 * 6 + 3 * 6


# ----------------------------------------------------------------------------- perceptual
def test_vgg19_perceptual_loads_weights_and_substitute_works_without(tmp_path):
    torch.manual_seed(0)
    vgg = VGG19Features()
    state = {k: torch.randn_like(v) * 0.05 for k, v in vgg.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(3, 3)  # a full torchvision state dict is accepted
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    loss, name = build_perceptual("auto", str(path))
    assert name == "vgg19" and sum(isinstance(m, torch.nn.Conv2d) for m in loss.modules()) == 16
    assert torch.equal(loss.vgg.features[34].weight, state["features.34.weight"])
    target = torch.rand(2, 96, 24) * -3
    prediction = (target + 0.3 * torch.randn_like(target)).requires_grad_()
    value = loss(prediction, target)
    value.backward()
    assert value > 0 and prediction.grad.abs().sum() > 0 and float(loss(target, target)) == 0
    substitute, name = build_perceptual("auto", None)
    assert name == "mel-gradient" and float(substitute(prediction.detach(), target)) > 0
    assert float(substitute(target, target)) == 0
    assert build_perceptual("none") == (None, "none")
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(ModelFileError):
        build_perceptual("vgg19", str(bad))


# ----------------------------------------------------------------------------- codebook
def test_revival_changes_only_dead_codes():
    torch.manual_seed(0)
    monitor = CodebookMonitor(16, window=4)
    for step in range(1, 5):
        monitor.update(torch.tensor([[0, 1, 2], [3, 4, 4]]), step)
    assert histogram_stats(torch.ones(16)) == {"usage": 1.0, "perplexity": pytest.approx(16.0)}
    assert monitor.window_stats()["usage"] == 5 / 16
    dead = monitor.dead_codes(step=4, horizon=4)
    assert dead.tolist() == list(range(5, 16))
    embedding = torch.nn.Parameter(torch.zeros(16, 3))
    optimizer = torch.optim.AdamW([embedding])
    embedding.grad = torch.ones(16, 3)
    optimizer.step()
    before = embedding.detach().clone()
    latents = torch.randn(40, 3) + 5
    rows = revive_dead_codes(embedding.data, dead, latents, noise=0.01)
    reset_adam_rows(optimizer, embedding, dead)
    assert torch.equal(embedding[:5], before[:5])
    assert not torch.equal(embedding[5:], before[5:])
    gaps = torch.cdist(rows, latents).min(dim=1).values
    assert float(gaps.max()) < 0.05 * float(latents.std())  # noise is 0.01 std per dimension
    assert float(optimizer.state[embedding]["exp_avg"][5:].abs().sum()) == 0
    assert float(optimizer.state[embedding]["exp_avg"][:5].abs().min()) > 0
    monitor.mark_used(dead, 4)
    assert monitor.dead_codes(step=5, horizon=4).numel() == 0


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_shards_under_limit_and_writes_atomically(tmp_path, monkeypatch):
    torch.manual_seed(0)
    state = {"big": torch.randn(700_000), "model": {f"w{i}": torch.randn(300, 300) for i in range(8)},
             "steps": [1, 2.5, None, "x"], "rng": torch.get_rng_state(), "pair": (0.8, 0.9),
             "view": torch.randn(1000, 1000)[:10]}
    folder = ckpt.save_checkpoint(tmp_path, state, step=5, shard_mib=1, meta={"stage": "stage1"})
    files = sorted(folder.iterdir())
    assert len(files) > 5 and all(f.stat().st_size <= 2 ** 20 for f in files)
    for f in files:
        if f.suffix == ".pt":
            torch.load(f, weights_only=True)
    loaded, index = ckpt.load_checkpoint(folder)
    assert index["stage"] == "stage1" and "big" in index["split_tensors"]
    assert torch.equal(loaded["big"], state["big"]) and torch.equal(loaded["view"], state["view"])
    assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())
    assert loaded["steps"] == state["steps"] and loaded["pair"] == (0.8, 0.9)

    real_save, calls = torch.save, []

    def failing_save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(tmp_path, {"model": {"w": torch.zeros(400, 400)}, "big": torch.zeros(600_000)},
                             step=9, shard_mib=1)
    monkeypatch.setattr(torch, "save", real_save)
    assert ckpt.latest_checkpoint(tmp_path) == folder
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [folder.name]
    assert torch.equal(ckpt.load_checkpoint(folder)[0]["big"], state["big"])
    (folder / files[-1].name).write_bytes(b"corrupt")
    with pytest.raises(ModelFileError):
        ckpt.load_checkpoint(folder)


# ----------------------------------------------------------------------------- trainer
def _final_state(run: Path):
    state, _ = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))
    return state


def _assert_same(a, b, path=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            _assert_same(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}/{i}")
    else:
        assert a == b, path


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_resume_after_interruption_equals_straight_run(corpus, tmp_path, stage):
    config = tiny_config(stage=stage, steps=6, **{"stage1.revive_every": 2})
    init = None
    if stage == "stage2":
        init = tmp_path / "init.safetensors"
        MelTok.from_config("tiny").save(init)
        config = config.replace(init=str(init))
    straight = Trainer(config, corpus, tmp_path / "straight").run()
    first = Trainer(config, corpus, tmp_path / "resumed").run(max_steps_this_run=3)
    assert (straight["step"], first["step"], first["stopped"]) == (6, 3, "step limit of this run")
    second = Trainer(config, corpus, tmp_path / "resumed").run()
    assert second["step"] == 6
    a, b = _final_state(tmp_path / "straight"), _final_state(tmp_path / "resumed")
    for part in ("modules", "optimizers", "schedulers", "codebook", "data", "step", "epoch"):
        _assert_same(a[part], b[part], part)
    _assert_same(a["rng"], b["rng"], "rng")
    assert MelTok.load(tmp_path / "resumed" / "model.safetensors").model_id == \
        MelTok.load(tmp_path / "straight" / "model.safetensors").model_id
    (_, earlier), (_, latest) = ckpt.list_checkpoints(tmp_path / "resumed")[-2:]  # one checkpoint folder loads
    state = ckpt.load_checkpoint(earlier)[0]["modules"]["model"]  # that checkpoint, not the run's latest
    loaded = MelTok.load(earlier).state_dict()
    assert all(torch.equal(loaded[name], value) for name, value in state.items())
    assert MelTok.load(earlier).model_id != MelTok.load(tmp_path / "resumed").model_id == MelTok.load(latest).model_id


def test_a_resume_trains_with_the_changed_learning_rate_and_weight_decay(corpus, tmp_path, caplog):
    """``--set stage1.lr=...`` on a resume takes effect (the checkpoint's optimizer state used to bring
    the old rate back); the moments and the schedule's position are the checkpoint's."""
    config = tiny_config(steps=4, **{"stage1.lr_decay": 0.5, "stage1.steps_per_epoch": 2})
    Trainer(config, corpus, tmp_path / "run").run(max_steps_this_run=2)
    changed = config.replace(**{"stage1.lr": 1e-5, "stage1.weight_decay": 0.5})
    trainer = Trainer(changed, corpus, tmp_path / "run")
    with caplog.at_level(logging.INFO):
        trainer.run()
    assert "resuming with changed settings: stage1.lr, stage1.weight_decay\n" in caplog.text
    rates = {record["step"]: record["scalars"]["lr/tokenizer"] for record in read_scalars(tmp_path / "run")
             if "lr/tokenizer" in record["scalars"]}
    assert rates[1] == pytest.approx(4e-4)
    assert (rates[3], rates[4]) == (pytest.approx(1e-5 * 0.5), pytest.approx(1e-5 * 0.25))  # new rate, same schedule
    group = trainer.stage.optimizers["tokenizer"].param_groups[0]
    assert (group["weight_decay"], group["initial_lr"]) == (0.5, 1e-5)
    state = trainer.stage.optimizers["tokenizer"].state_dict()["state"]
    assert state and all(int(entry["step"]) == 4 for entry in state.values())  # moments carried on, not reset


def test_time_limit_stops_with_checkpoint_and_eval_hook_is_logged(corpus, tmp_path):
    calls = []

    def hook(model, audio, sample_rate):
        calls.append(audio.shape)
        return {"dummy": 1.5}

    config = tiny_config(steps=100, val_every=1, max_minutes=1e-4, checkpoint_every=50)
    summary = Trainer(config, corpus, tmp_path / "run", eval_hook=hook).run()
    assert summary["step"] == 1 and summary["stopped"].startswith("time limit")
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step-000000001"
    assert (tmp_path / "run" / "model.safetensors").is_file() and calls == [(2, CROP)]
    records = read_scalars(tmp_path / "run")
    tags = set().union(*(r["scalars"] for r in records))
    assert {"val/dummy", "val/mel_l1", "val/codebook_usage", "train/total", "codebook/perplexity"} <= tags


def test_cli_trains_both_stages(corpus, tmp_path):
    run1, run2 = tmp_path / "s1", tmp_path / "s2"
    common = ["--data", str(corpus), "--steps", "2", "--batch-size", "2", "--set", f"crop_samples={CROP}",
              "--set", "val_crops=2", "--device", "cpu"]
    result = CliRunner().invoke(meltok_cli, ["train", "stage1", "-o", str(run1), "--preset", "tiny", *common])
    assert result.exit_code == 0, result.output
    saved = json.loads((run1 / "config.json").read_text())
    assert saved["stage1"]["perceptual"] == "mel-gradient" and saved["preset"] == "tiny"
    stage1_model = MelTok.load(run1 / "model.safetensors")
    result = CliRunner().invoke(meltok_cli, ["train", "stage2", "-o", str(run2), "--init", str(run1), *common,
                                            "--set", "stage2.gan=false"])
    assert result.exit_code == 0, result.output
    stage2_model = MelTok.load(run2 / "model.safetensors")
    for key, value in stage1_model.state_dict().items():
        if key.startswith(("encoder.", "quant_conv.", "quantizer.")):
            assert torch.equal(value, stage2_model.state_dict()[key]), key
    assert json.loads((run2 / "config.json").read_text())["stage2"]["gan"] is False
    result = CliRunner().invoke(meltok_cli, ["train", "stage1", "-o", str(tmp_path / "x"), *common,
                                             "--set", "stepz=1"])
    assert result.exit_code == 1 and "unknown training config field" in result.output
    result = CliRunner().invoke(meltok_cli, ["train", "stage2", "-o", str(run1), *common])
    assert result.exit_code == 1 and "stage" in result.output  # a stage-1 run cannot resume as stage 2


def test_batches_resume_position(corpus):
    reader = CorpusReader(corpus, "train")
    straight = CropBatches(reader, 2, CROP, seed=1, prefetch=2)
    expected = [straight.next() for _ in range(4)]
    straight.close()
    first = CropBatches(reader, 2, CROP, seed=1, prefetch=2)
    first.next(), first.next()
    position = first.state_dict()
    first.close()
    resumed = CropBatches(reader, 2, CROP, seed=1, prefetch=0)
    resumed.load_state_dict(position)
    assert torch.equal(resumed.next(), expected[2]) and torch.equal(resumed.next(), expected[3])
    other_rank = CropBatches(reader, 2, CROP, seed=1, rank=1, prefetch=0)
    assert not torch.equal(other_rank.next(), expected[0])


def _peakiness(crop: np.ndarray) -> float:
    """Share of a crop's power in its 1% strongest FFT bins: near 1 for a few lines, about 0.05 for white noise."""
    power = np.sort(np.abs(np.fft.rfft(crop.astype(np.float64) * np.hanning(crop.size))) ** 2)[::-1]
    return float(power[:power.size // 100].sum() / power.sum())


class _SilentReader:
    """A corpus of silence: every non-zero crop is a synthetic one."""

    def random_crop(self, rng, num_samples):
        rng.random()
        return np.zeros(num_samples, np.float32)


def test_tonal_crops_replace_a_share_of_the_batch_and_resume():
    reader = _SilentReader()
    tonal = CropBatches(reader, 8, CROP, seed=2, prefetch=0, tonal_fraction=1.0).next().numpy()
    assert min(_peakiness(c) for c in tonal) > 0.9  # lines, not noise
    assert all(-31 < 20 * np.log10(np.abs(c).max()) < -2.9 for c in tonal)
    assert len({round(float(np.abs(c).max()), 6) for c in tonal}) == 8  # each crop its own draw
    mixed = CropBatches(reader, 16, CROP, seed=3, prefetch=0, tonal_fraction=0.5)
    batches = [mixed.next().numpy() for _ in range(4)]
    share = np.mean([np.any(c) for batch in batches for c in batch])
    assert 0.3 < share < 0.7
    resumed = CropBatches(reader, 16, CROP, seed=3, prefetch=0, tonal_fraction=0.5)
    first = CropBatches(reader, 16, CROP, seed=3, prefetch=0, tonal_fraction=0.5)
    first.next()
    resumed.load_state_dict(first.state_dict())
    assert np.array_equal(resumed.next().numpy(), batches[1])
    assert TrainConfig().replace(**{"tonal_fraction": "0.25"}).tonal_fraction == 0.25
    with pytest.raises(TrainConfigError, match="tonal_fraction must lie in"):
        TrainConfig(tonal_fraction=1.5)


def _ddp_worker(rank: int, world_size: int, port: int, corpus: str, out: str, result: str):
    import os

    from meltok.train import distributed

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    try:
        config = tiny_config(steps=4, checkpoint_every=2, **{"stage1.revive_every": 2})
        trainer = Trainer(config, corpus, out, device="cpu")
        trainer.run(max_steps_this_run=3)
        torch.save({k: v.clone() for k, v in trainer.model.state_dict().items()}, f"{result}-{rank}.pt")
        Trainer(config, corpus, out, device="cpu").run()  # resume to step 4 on both ranks
    finally:
        distributed.teardown()


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(corpus, tmp_path):
    """torchrun-style DDP with gloo: both ranks hold the same weights; rank 0 alone writes."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out, result = tmp_path / "run", tmp_path / "weights"
    mp.spawn(_ddp_worker, args=(2, port, str(corpus), str(out), str(result)), nprocs=2, join=True)
    rank0, rank1 = torch.load(f"{result}-0.pt"), torch.load(f"{result}-1.pt")
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    state = _final_state(out)
    assert state["step"] == 4 and len(state["rng"]) == 2 and len(state["data"]) == 2
    assert state["data"][0] != state["data"][1]  # independent crop streams per rank
    assert [p.name for _, p in ckpt.list_checkpoints(out)] == ["step-000000003", "step-000000004"]


def test_cpu_defaults_apply_only_to_fields_nobody_set(tmp_path, caplog):
    from meltok.train.cli import build_config

    cpu = build_config("stage1", None, tmp_path / "a", device_type="cpu")
    assert (cpu.preset, cpu.batch_size) == ("edge", 8)
    assert "training on the CPU: preset edge, batch size 8" in caplog.text
    gpu = build_config("stage1", None, tmp_path / "a", device_type="cuda")
    assert (gpu.preset, gpu.batch_size) == ("paper", 64)
    chosen = build_config("stage1", None, tmp_path / "a", device_type="cpu", preset="paper",
                          overrides=["batch_size=2"])
    assert (chosen.preset, chosen.batch_size) == ("paper", 2)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"batch_size": 16}))
    from_file = build_config("stage1", partial, tmp_path / "a", device_type="cpu")
    assert (from_file.preset, from_file.batch_size) == ("edge", 16)
    resumed = tmp_path / "run"
    resumed.mkdir()
    (resumed / "config.json").write_text(TrainConfig(preset="tiny", batch_size=3).to_json())
    again = build_config("stage1", None, resumed, device_type="cpu")
    assert (again.preset, again.batch_size) == ("tiny", 3)


def test_ctrl_c_saves_a_checkpoint_and_exits_non_zero(corpus, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    code = "import sys\nfrom meltok.cli import main\nsys.argv[0] = 'meltok'\nmain()\n"
    args = ["train", "stage1", "--data", corpus, "-o", run, "--preset", "tiny", "--steps", "100000",
            "--batch-size", "1", "--device", "cpu", "--set", f"crop_samples={CROP}", "--set", "val_crops=0",
            "--set", "log_every=1"]
    process = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and "step 2 of 100000" not in _read(run / "train.log"):
            time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=240)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGINT, stderr
    assert "(signal)" in stdout and "stopping after this step with a checkpoint" in stderr
    assert ckpt.latest_checkpoint(run) is not None and (run / "model.safetensors").is_file()
    progress = [line for line in _read(run / "train.log").splitlines() if "step 2 of 100000" in line][0]
    assert "steps/s, ETA" in progress


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.is_file() else ""
