"""Write a meltok model's weights in the reference implementation's two checkpoint layouts.

Used to build official-format fixtures of other shapes than official-tiny (widths, attention
levels, codebook and backbone sizes), so the architecture inference is tested on each.
"""
import torch

from meltok_runtime.melfilters import hann_window, mel_filterbank


def write_official_checkpoints(model, folder, *, seed: int = 0):
    """Write ``stage1.pt`` and ``stage2.ckpt`` into ``folder``; returns their paths.

    The stage-1 decoder is a perturbed copy of the model's decoder (as fine-tuning leaves it),
    and the stage-2 file carries the training-only entries that loading must ignore.
    """
    gen = torch.Generator().manual_seed(seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    stage1 = {k: v for k, v in state.items() if k.startswith(("encoder.", "quant_conv.", "quantizer."))}
    for key, value in state.items():
        if key.startswith(("decoder.", "post_quant_conv.")):
            stage1[key] = value + 0.01 * torch.randn(value.shape, generator=gen)
    # The inverse of ``meltok.official._split_official``, written out on its own on purpose: a test that
    # reused the conversion's key mapping could not catch a mistake in it.
    stage2 = {}
    for key, value in state.items():
        if key.startswith("post_quant_conv."):
            stage2["feature_extractor.mel_decoder.0." + key[len("post_quant_conv."):]] = value
        elif key.startswith("decoder."):
            stage2["feature_extractor.mel_decoder.1." + key[len("decoder."):]] = value
        elif key.startswith(("backbone.", "head.")):
            stage2[key] = value
    cfg = model.config.frontend
    stage2["head.istft.window"] = torch.from_numpy(hann_window(cfg.n_fft).copy())
    stage2["feature_extractor.mel_spec.spectrogram.window"] = torch.from_numpy(hann_window(cfg.n_fft).copy())
    stage2["feature_extractor.mel_spec.mel_scale.fb"] = torch.from_numpy(
        mel_filterbank(cfg.n_fft // 2 + 1, cfg.n_mels, cfg.sample_rate, cfg.f_min, cfg.f_max).copy())
    stage2["multiresddisc.discriminators.0.convs.0.bias"] = torch.zeros(4)
    stage1_path, stage2_path = folder / "stage1.pt", folder / "stage2.ckpt"
    torch.save({"encoder": stage1, "steps": 10, "epoch": 1}, stage1_path)
    torch.save({"epoch": 1, "global_step": 10, "pytorch-lightning_version": "1.8.6", "state_dict": stage2,
                "hparams_name": "kwargs", "hyper_parameters": {"sample_rate": cfg.sample_rate}}, stage2_path)
    return stage1_path, stage2_path
