"""Conversion of the reference implementation's checkpoints (stage-1 file + stage-2 Lightning checkpoint).

The architecture is inferred from the tensors' names and shapes; loading never unpickles
arbitrary objects unless the caller opts in (``allow_pickle``).
"""
from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from meltok_runtime.errors import ModelFileError
from meltok_runtime.melfilters import mel_filterbank

from .config import FrontendConfig, MelTokConfig, TokenizerConfig, VocoderConfig
from .modelfile import load_state, model_id_of, weights_hash

OFFICIAL_NAME = "meltok-official"  # the config name of converted models: ids never depend on file names

# Stage-2 state-dict prefixes that training leaves behind and inference ignores.
_STAGE2_IGNORED = ("feature_extractor.mel_spec.", "multiresddisc.", "multiperioddisc.", "melspec_loss.",
                   "head.istft.window")
# Stage-1 tokenizer parts replaced by the stage-2 fine-tuned copies.
_STAGE1_IGNORED = ("decoder.", "post_quant_conv.")


def _torch_load(path, allow_pickle: bool) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as error:
        raise ModelFileError(
            f"{str(path)!r} holds objects beyond plain tensors, and loading them could run code from the file "
            f"({_refusal_reason(error)}); if you trust its source, pass allow_pickle=True "
            "(CLI: --trust-pickle)")
    except (ImportError, AttributeError) as error:  # allow_pickle: the pickle names code not installed here
        raise ModelFileError(
            f"{str(path)!r} needs Python code that is not installed here to be unpickled ({error}); install the "
            "package that wrote it, or convert the checkpoint where it is installed")
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        raise ModelFileError(f"cannot read checkpoint {str(path)!r} ({str(error).splitlines()[0][:160]}); "
                             "is it a complete PyTorch checkpoint?")


def _refusal_reason(error) -> str:
    """The line of torch's weights-only refusal that names the object (else its first line), one line, no colours."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    reason = next((line for line in lines if "GLOBAL " in line), lines[0]).split(". Please")[0]
    return re.sub(r"\x1b\[[0-9;]*m", "", reason)[:200]


def _indices(state: dict, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for key in state for m in [regex.match(key)] if m})


def _shape(state: dict, key: str, source: str) -> tuple:
    if key not in state:
        raise ModelFileError(f"{source}: missing key {key!r}; this is not a MelTok reference checkpoint")
    return tuple(state[key].shape)


def infer_config(tokenizer: dict, vocoder: dict, *, n_mels: int, n_fft: int, sample_rate: int,
                 name: str) -> MelTokConfig:
    """Architecture from tensor names and shapes. ``tokenizer`` uses meltok key names
    (``encoder.*``, ``decoder.*``, ``quantizer.*``); ``vocoder`` the ``backbone.*``/``head.*`` keys."""
    src = "official checkpoint"
    channels = _shape(tokenizer, "encoder.conv_in.weight", src)[0]
    levels = _indices(tokenizer, r"encoder\.down\.(\d+)\.block\.0\.conv1\.weight")
    if not levels or levels != list(range(len(levels))):
        raise ModelFileError(f"{src}: cannot find the encoder levels (encoder.down.N.block.0.*)")
    mults = tuple(_shape(tokenizer, f"encoder.down.{i}.block.0.conv1.weight", src)[0] // channels for i in levels)
    encoder_blocks = len(_indices(tokenizer, r"encoder\.down\.0\.block\.(\d+)\.conv1\.weight"))
    decoder_blocks = len(_indices(tokenizer, r"decoder\.up\.0\.block\.(\d+)\.conv1\.weight"))
    base = n_mels // 2
    enc_attn = {base // 2 ** i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in tokenizer}
    dec_attn = {base // 2 ** i for i in levels if f"decoder.up.{i}.attn.0.q.weight" in tokenizer}
    if enc_attn != dec_attn:
        raise ModelFileError(f"{src}: encoder attention at resolutions {sorted(enc_attn)} but decoder at "
                             f"{sorted(dec_attn)}; meltok needs them equal")
    codebook_size, embedding_dim = _shape(tokenizer, "quantizer.embedding.weight", src)
    norm_width = _shape(tokenizer, "encoder.conv_in.bias", src)[0]
    dim, input_channels, _ = _shape(vocoder, "backbone.embed.weight", src)
    if input_channels != n_mels:
        raise ModelFileError(f"{src}: vocoder expects {input_channels} mel bins, tokenizer {n_mels}")
    head_outputs = _shape(vocoder, "head.out.weight", src)[0]
    return MelTokConfig(
        name=name,
        frontend=FrontendConfig(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, f_max=sample_rate / 2),
        tokenizer=TokenizerConfig(
            channels=channels, channels_mult=mults, encoder_blocks=encoder_blocks, decoder_blocks=decoder_blocks,
            attn_resolutions=tuple(sorted(enc_attn)), resolution=n_mels,
            z_channels=_shape(tokenizer, "encoder.conv_out.weight", src)[0],
            embedding_dim=embedding_dim, codebook_size=codebook_size, num_groups=min(32, norm_width)),
        vocoder=VocoderConfig(
            dim=dim, intermediate_dim=_shape(vocoder, "backbone.convnext.0.pwconv1.weight", src)[0],
            num_layers=len(_indices(vocoder, r"backbone\.convnext\.(\d+)\.gamma")), n_fft=head_outputs - 2),
    )


def _split_official(stage1: dict, stage2: dict) -> tuple[dict, dict, dict]:
    """Map the two official state dicts onto meltok names: (tokenizer keys, vocoder keys, stage-2 extras)."""
    tokenizer = {k: v for k, v in stage1.items() if not k.startswith(_STAGE1_IGNORED)}
    unknown = sorted(k for k in tokenizer if not k.startswith(("encoder.", "quant_conv.", "quantizer.")))
    extras, vocoder = {}, {}
    for key, value in stage2.items():
        if key.startswith("feature_extractor.mel_decoder.0."):
            tokenizer["post_quant_conv." + key[len("feature_extractor.mel_decoder.0."):]] = value
        elif key.startswith("feature_extractor.mel_decoder.1."):
            tokenizer["decoder." + key[len("feature_extractor.mel_decoder.1."):]] = value
        elif key.startswith(("backbone.", "head.out.")):
            vocoder[key] = value
        elif key.startswith(_STAGE2_IGNORED):
            extras[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise ModelFileError(f"official checkpoints hold keys meltok does not know: {unknown[:10]}"
                             f"{'...' if len(unknown) > 10 else ''}; are these MelTok reference files?")
    return tokenizer, vocoder, extras


def load_official(cls, stage1_path, stage2_path, *, allow_pickle: bool = False):
    """Build ``cls`` from the reference stage-1 file and stage-2 Lightning checkpoint."""
    stage1_file = _torch_load(stage1_path, allow_pickle)
    stage2_file = _torch_load(stage2_path, allow_pickle)
    if not isinstance(stage1_file, dict) or "encoder" not in stage1_file:
        raise ModelFileError(f"{str(stage1_path)!r} is not a stage-1 tokenizer file (expected a dict with an "
                             "'encoder' state dict, as written by the reference train_96*.py)")
    if not isinstance(stage2_file, dict) or "state_dict" not in stage2_file:
        raise ModelFileError(f"{str(stage2_path)!r} is not a stage-2 Lightning checkpoint (no 'state_dict')")
    tokenizer, vocoder, extras = _split_official(stage1_file["encoder"], stage2_file["state_dict"])
    hparams = stage2_file.get("hyper_parameters") or {}
    if not isinstance(hparams, Mapping):  # e.g. an argparse.Namespace, readable with allow_pickle=True
        hparams = getattr(hparams, "__dict__", {})
    filterbank = extras.get("feature_extractor.mel_spec.mel_scale.fb")
    window = extras.get("head.istft.window")
    n_mels = filterbank.shape[1] if filterbank is not None else 96
    n_fft = window.shape[0] if window is not None else 1024
    config = infer_config(tokenizer, vocoder, n_mels=n_mels, n_fft=n_fft,
                          sample_rate=int(hparams.get("sample_rate", 44100)),
                          name=OFFICIAL_NAME)
    if filterbank is not None:
        ours = mel_filterbank(filterbank.shape[0], n_mels, config.frontend.sample_rate, 0.0, config.frontend.f_max)
        gap = float(np.abs(ours - filterbank.float().numpy()).max())
        if gap > 1e-4:
            raise ModelFileError(f"the checkpoint's mel filterbank differs from meltok's HTK filterbank by {gap:.3g}; "
                                 "this model was trained with another front end, which meltok does not support")
    model = cls(config)
    load_state(model, {**tokenizer, **vocoder}, source=f"{stage1_path} + {stage2_path}")
    model.model_id = model_id_of(config, weights_hash(model.state_dict()))
    return model
