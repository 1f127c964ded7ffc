"""``meltok`` command line: a thin layer over the library (PyTorch path)."""
import json
import logging
import sys
from pathlib import Path

import click

from meltok_runtime.atomic import check_new_folder, check_new_output
from meltok_runtime.cli_support import (CommandGroup, force_option, load_for_encoding, setup_logging, user_errors,
                                        verbose_option, version_option, write_decoded)
from meltok_runtime.errors import MeltokError
from meltok_runtime.tokenfile import check_token_file, read_tokens, write_tokens

from .config import PRESETS
from .evaluate import eval_command
from .train.cli import train

log = logging.getLogger("meltok")

model_option = click.option(
    "-m", "--model", "model_path", type=click.Path(), default=None,
    help="Model file (.safetensors from `meltok convert`, `meltok init` or training) or export bundle folder "
         "(from meltok-export, run with ONNX Runtime); default: the shipped model.")


def _load_model(model_path, device):
    """A MelTok from a model file, or a runtime Codec from a bundle folder (same encode/decode calls)."""
    if model_path is not None and Path(model_path).is_dir():
        from meltok_runtime import Codec

        return Codec.open(model_path)
    from .codec import MelTok
    from .default_model import default_model_path

    return MelTok.load(model_path or default_model_path(), device=device)


@click.group(cls=CommandGroup)
@verbose_option
@version_option
def main(verbose):
    """MelTok: 44.1 kHz audio <-> one stream of discrete tokens (PyTorch path).

    Commands that run a model file need PyTorch (pip install -e '.[train]'); meltok-rt runs
    exported bundles without it."""
    setup_logging(verbose)


@main.command()
@click.argument("stage1", type=click.Path(dir_okay=False))
@click.argument("stage2", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Model file to write.")
@force_option
@click.option("--trust-pickle", is_flag=True,
              help="Allow full unpickling of the checkpoints (can run code from them: only for files you trust).")
@user_errors
def convert(stage1, stage2, output, force, trust_pickle):
    """Convert official checkpoints (stage-1 tokenizer file, stage-2 Lightning .ckpt) to a model file.

    The official MelCap checkpoints are published at https://huggingface.co/jingyi49/MelCap."""
    from .codec import MelTok

    check_new_output(output, inputs=(stage1, stage2), force=force, suffixes=(".safetensors",), what="model file")
    model = MelTok.from_official(stage1, stage2, allow_pickle=trust_pickle)
    model_id = model.save(output)
    click.echo(f"wrote {output} ({model_id}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)")


@main.command()
@click.option("--preset", required=True, type=click.Choice(sorted(PRESETS)), help="Architecture to build.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Model file to write.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
@force_option
@user_errors
def init(preset, output, seed, force):
    """Write a model file of PRESET with random weights (for export tests and benchmarks; it does not
    reconstruct audio: train it, or convert the official checkpoints)."""
    import torch

    from .codec import MelTok

    check_new_output(output, force=force, suffixes=(".safetensors",), what="model file")
    torch.manual_seed(seed)
    model = MelTok.from_config(preset)
    model_id = model.save(output)
    click.echo(f"wrote {output} ({model_id}, preset {preset}, random weights, "
               f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)")


@main.command()
@click.argument("audio", type=click.Path())
@model_option
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Token file to write (.mtok).")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")
@user_errors
def encode(audio, model_path, output, device):
    """Encode an audio file (any format soundfile reads) to a token file."""
    from meltok_runtime.atomic import check_output_path

    check_output_path(output)
    model = _load_model(model_path, device)
    batch = load_for_encoding(audio, model.sample_rate)
    tokens = model.encode(batch, model.sample_rate)
    write_tokens(output, tokens, sample_rate=model.sample_rate, num_samples=batch.shape[-1],
                 model_id=model.model_id, codebook_size=model.codebook_size)
    click.echo(f"wrote {output}: {tokens.shape[-1]} columns x {tokens.shape[1]} rows "
               f"({batch.shape[-1] / model.sample_rate:.2f} s)")


@main.command()
@click.argument("tokens", type=click.Path())
@model_option
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Audio file to write; the format follows the suffix (.wav, .flac, .ogg).")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")
@user_errors
def decode(tokens, model_path, output, device):
    """Decode a token file to audio at 44.1 kHz, trimmed to the encoded length."""
    from meltok_runtime.atomic import check_output_path

    check_output_path(output)
    token_file = read_tokens(tokens)
    model = _load_model(model_path, device)
    check_token_file(token_file, model_id=model.model_id, sample_rate=model.sample_rate, source=tokens)
    audio = model.decode(token_file.tokens, num_samples=max(token_file.num_samples))
    write_decoded(output, audio, token_file.num_samples, model.sample_rate)
    click.echo(f"wrote {output}: {max(token_file.num_samples) / model.sample_rate:.2f} s at {model.sample_rate} Hz")


@main.command()
@click.argument("path", type=click.Path())
@user_errors
def info(path):
    """Describe a model file or a token file (token files need no PyTorch)."""
    try:
        token_file = read_tokens(path)
    except MeltokError:
        from .checkpoints import read_model_metadata

        metadata = read_model_metadata(path)
        config = json.loads(metadata["config"])
        click.echo(json.dumps({"kind": "model", "model_id": metadata["model_id"],
                               "format_version": int(metadata["format_version"]), "config": config}, indent=2))
        return
    click.echo(json.dumps(token_file.describe(), indent=2))


@main.group()
def data():
    """Training data: build a corpus from folders of audio."""


@data.command("build")
@click.argument("sources", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Corpus folder.")
@click.option("--seed", default=0, show_default=True, help="Seed of the train/valid/test split.")
@click.option("--valid-fraction", default=0.05, show_default=True)
@click.option("--test-fraction", default=0.05, show_default=True)
@click.option("--holdout", multiple=True, help="Source (package or folder name) held out for test; repeatable.")
@click.option("--shard-mb", default=45.0, show_default=True, help="Largest shard in MiB.")
@click.option("--keep-band-limited", is_flag=True, help="Keep band-limited files (tagged) instead of excluding them.")
@click.option("--max-files-per-source", type=int, default=None)
@click.option("--workers", type=int, default=1, show_default=True, help="Decoding processes.")
@user_errors
def data_build(sources, output, seed, valid_fraction, test_fraction, holdout, shard_mb, keep_band_limited,
               max_files_per_source, workers):
    """Scan SOURCES for audio and write a sharded 44.1 kHz corpus (resumable: rerun to continue)."""
    from .train.corpus import build_corpus

    # an existing corpus folder is resumed (build_corpus refuses any other non-empty folder)
    check_new_folder(output, inputs=sources, force=True)

    with click.progressbar(length=1, label="files", file=sys.stderr) as bar:
        def progress(done, total):
            bar.length = total
            bar.update(done - bar.pos)

        manifest = build_corpus(sources, output, seed=seed, valid_fraction=valid_fraction,
                                test_fraction=test_fraction, holdout=list(holdout), shard_mb=shard_mb,
                                exclude_band_limited=not keep_band_limited,
                                max_files_per_source=max_files_per_source, workers=workers, progress=progress)
    totals = manifest.get("totals", {})
    click.echo(json.dumps(totals, indent=2))


@data.command("clips")
@click.argument("corpus", type=click.Path(file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder for the clips.")
@click.option("--split", default="test", show_default=True)
@click.option("--category", "categories", multiple=True, metavar="SOURCE=CATEGORY",
              help="Put SOURCE's clips in the folder CATEGORY (e.g. klettres-data=speech); repeatable.")
@click.option("--per-source", default=10, show_default=True)
@click.option("--seconds", default=8.0, show_default=True, help="Longest clip.")
@click.option("--source", "sources", multiple=True, help="Use only this source; repeatable (default: all).")
@click.option("--seed", default=0, show_default=True)
@click.option("-y", "--force", is_flag=True,
              help="Write into an existing, non-empty folder (clips of the same names are replaced).")
@user_errors
def data_clips(corpus, output, split, categories, per_source, seconds, sources, seed, force):
    """Cut evaluation clips from a corpus split (default: the held-out test split)."""
    from .train.heldout import export_clips

    check_new_folder(output, inputs=(corpus,), force=force)

    mapping = dict(item.split("=", 1) for item in categories if "=" in item)
    clips = export_clips(corpus, output, split=split, categories=mapping, per_source=per_source,
                         seconds=seconds, seed=seed, sources=list(sources))
    click.echo(f"wrote {len(clips)} clips to {output}")


main.add_command(eval_command)
main.add_command(train)
