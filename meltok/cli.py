"""``meltok`` command line: a thin layer over the library (PyTorch path)."""
import json
import logging

import click

from meltok_runtime.io.atomic import check_new_folder, check_new_output
from meltok_runtime.cli.shared import (CommandGroup, check_stream_output, decode_source, decoded_output_option,
                                        encode_source, force_option, original_rate_option, progress_bar, setup_logging,
                                        stdin_options, stream_options, subtype_option, user_errors, verbose_option,
                                        version_option)
from meltok_runtime.errors import MeltokError
from meltok_runtime.io.tokenfile import read_tokens

from .config import PRESETS
from .train.cli import train

log = logging.getLogger("meltok")

model_option = click.option(
    "-m", "--model", "model_path", type=click.Path(), default=None,
    help="Model file (.safetensors from `meltok convert`, `meltok init` or training), training run folder, export "
         "bundle folder (run with ONNX Runtime) or preset name; default: the shipped model.")


def _open_codec(model_path, device):
    """The codec for ``-m`` (``loaders.open_codec``): a MelTok, or a runtime Codec for a bundle folder."""
    from .codec import MelTok
    from .loaders import open_codec

    return open_codec(MelTok, model_path, device=device)


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
@click.option("--trust-pickle", is_flag=True,
              help="Allow full unpickling of the checkpoints (can run code from them: only for files you trust).")
@force_option
@user_errors
def convert(stage1, stage2, output, trust_pickle, force):
    """Convert official checkpoints (stage-1 tokenizer file, stage-2 Lightning .ckpt) to a model file.

    The official MelCap checkpoints are published at https://huggingface.co/jingyi49/MelCap."""
    from .codec import MelTok
    from .loaders import load_model

    check_new_output(output, inputs=[stage1, stage2], force=force, suffixes=(".safetensors",), what="model file")
    model = load_model(MelTok, (stage1, stage2), allow_pickle=trust_pickle)
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


@main.group()
def model():
    """Model files made from other models (no training)."""


@model.command("mel-inversion")
@click.argument("source", type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Model file to write.")
@force_option
@user_errors
def model_mel_inversion(source, output, force):
    """Write a model that decodes through the log-mel: SOURCE's encoder, codebook and decoder (a stage-1
    run folder, or a model file whose decoder outputs the log-mel), no neural vocoder; the audio comes from
    the runtime's MelInverter (name suffixed -mel-inversion)."""
    from .codec import MelTok
    from .config import MEL_INVERSION_HEAD
    from .loaders import load_model

    check_new_output(output, inputs=[source], force=force, suffixes=(".safetensors",), what="model file")
    model = load_model(MelTok, source).with_vocoder_head(MEL_INVERSION_HEAD)
    model_id = model.save(output)
    click.echo(f"wrote {output} ({model_id}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters; "
               "export it with meltok-export)")


@main.command()
@click.argument("audio", type=click.Path(allow_dash=True))
@model_option
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Token file to write (.mtok).")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")
@force_option
@stdin_options
@user_errors
def encode(audio, model_path, output, device, force, input_format, rate, channels, live, lookahead):
    """Encode an audio file (any format soundfile reads) to a token file; AUDIO = - reads standard input (a WAV,
    or raw PCM) to its end and encodes it as a file, or with --live as it arrives."""
    with _open_codec(model_path, device) as codec, progress_bar("encoding") as progress:
        written = encode_source(codec, audio, output, force=force, progress=progress, input_format=input_format,
                                rate=rate, channels=channels, live=live, lookahead=lookahead)
    click.echo(f"wrote {output}: {written.tokens.shape[-1]} columns x {written.tokens.shape[1]} rows "
               f"({written.num_samples[0] / written.sample_rate:.2f} s)")


@main.command()
@click.argument("tokens", type=click.Path())
@model_option
@decoded_output_option
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")
@original_rate_option
@subtype_option
@force_option
@stream_options
@user_errors
def decode(tokens, model_path, output, device, original_rate, subtype, force, **streaming):
    """Decode a token file to audio (at 44.1 kHz unless --original-rate), trimmed to the encoded length;
    --stream -o - writes it to standard output as it is decoded."""
    check_stream_output(output, streaming["stream"])
    with _open_codec(model_path, device) as codec, progress_bar("decoding") as progress:
        written = decode_source(codec, tokens, output, original_rate=original_rate, force=force, subtype=subtype,
                                progress=progress, **streaming)
    if written is None:  # streamed to standard output
        return
    click.echo(f"wrote {output}: {max(written.num_samples) / written.sample_rate:.2f} s at {written.sample_rate} Hz")


@main.command()
@click.argument("path", type=click.Path())
@user_errors
def info(path):
    """Describe a model file or a token file (token files need no PyTorch)."""
    try:
        token_file = read_tokens(path)
    except MeltokError:
        from .modelfile import read_model_metadata

        metadata = read_model_metadata(path)
        config = json.loads(metadata["config"])
        click.echo(json.dumps({"kind": "model", "model_id": metadata["model_id"],
                               "format_version": int(metadata["format_version"]), "config": config}, indent=2))
        return
    click.echo(json.dumps(token_file.describe(), indent=2))


@main.command(name="eval")
@click.argument("model", type=click.Path(exists=True))
@click.argument("audio_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", "report_prefix", type=click.Path(dir_okay=False), default=None,
              metavar="REPORT_PREFIX", help="Write the report as two files, REPORT_PREFIX.json (summaries and every clip) and "
                   "REPORT_PREFIX.csv (one row per clip); a .json or .csv suffix is dropped first.")
@click.option("--plots", "plot_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for PNG plots of original vs reconstructed mel spectrograms (a few clips).")
@click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Evaluate only the first S seconds of each clip.")
@click.option("--no-visqol", is_flag=True, help="Skip ViSQOL (the slowest metric).")
@click.option("--tones/--no-tones", default=True, show_default=True,
              help="Also code generated tones, a sine sweep and chords, and report what comes back at their "
                   "frequencies (about 50 s of audio per codec).")
@click.option("--anchors", is_flag=True,
              help="Also score classic codecs on the same clips (Opus 6/12 kbps, Vorbis q-1, MP3 16 kbps: "
                   "each skipped when its tool is missing) and true mel + Griffin-Lim; print one table "
                   "(with -o also REPORT_PREFIX-anchors.json).")
@click.option("--device", default="cpu", show_default=True, help="torch device for a model file, e.g. cuda.")
@force_option
@user_errors
def eval_command(model, audio_dir, report_prefix, plot_dir, max_seconds, no_visqol, tones, anchors, device, force):
    """Evaluate MODEL (.safetensors model file or export bundle folder) on the audio under AUDIO_DIR.

    Categories (music/speech/effects) come from the first folder under AUDIO_DIR.
    """
    from .evaluation import evaluate
    from .evaluation.anchors import anchors_path
    from .evaluation.report import report_paths

    if report_prefix:  # every output is checked before the (long) evaluation starts
        outputs = [*report_paths(report_prefix), *([anchors_path(report_prefix)] if anchors else [])]
        for path in outputs:
            check_new_output(path, inputs=[model], force=force, what="report")
    if plot_dir:
        check_new_folder(plot_dir, inputs=[audio_dir, model], force=force)
    report = evaluate(model, audio_dir, plot_dir=plot_dir, max_seconds=max_seconds, use_visqol=not no_visqol,
                      tones=tones, output=report_prefix, device=device)
    click.echo(report.table())
    written = list(report_paths(report_prefix)) if report_prefix else []
    if anchors:
        from .evaluation.anchors import anchors_table, run_anchors, write_anchors

        results = run_anchors(audio_dir, max_seconds=max_seconds, use_visqol=not no_visqol, tones=tones)
        click.echo("")
        click.echo(anchors_table(report, results))
        if report_prefix:
            written.append(write_anchors(report_prefix, report, results))
    if written:
        click.echo("wrote " + ", ".join(str(path) for path in written))
    if plot_dir:
        click.echo(f"wrote plots to {plot_dir}")


@main.command(name="spectrograms")
@click.argument("model", type=click.Path(exists=True))
@click.argument("audio_files", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", "folder", required=True, type=click.Path(file_okay=False),
              help="Folder for sweep.png and one STEM.png per audio file.")
@click.option("--device", default="cpu", show_default=True, help="torch device for a model file, e.g. cuda.")
@force_option
@user_errors
def spectrograms_command(model, audio_files, folder, device, force):
    """Spectrograms (0-8 kHz) of a generated sine sweep and of AUDIO_FILES, input beside MODEL's output."""
    from .evaluation.run import write_spectrograms

    check_new_folder(folder, inputs=[model, *audio_files], force=force)
    written = write_spectrograms(model, folder, audio_files, device=device)
    click.echo("wrote " + ", ".join(str(path) for path in written))


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

    with progress_bar("files") as progress:
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



@data.command("parts")
@click.argument("corpus", type=click.Path(file_okay=False, exists=True))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder of parts.")
@click.option("--split", default="train", show_default=True)
@click.option("--max-parts", type=click.IntRange(min=1), default=None, help="At most this many parts, spread over "
              "the corpus (default: every shard).")
@click.option("--part-mb", default=45.0, show_default=True, help="Largest part in MiB (a shard that is larger is "
              "refused).")
@user_errors
def data_parts(corpus, output, split, max_parts, part_mb):
    """Cut a split of CORPUS into self-contained parts of one shard each, to carry in pieces (a training
    run on a folder of parts picks up parts that arrive while it runs). Rerun to add parts."""
    from .train.corpus.parts import pack_parts

    check_new_folder(output, inputs=(corpus,), force=True)
    parts = pack_parts(corpus, output, split=split, max_parts=max_parts, part_mb=part_mb)
    click.echo(f"{len(parts)} parts in {output}")

main.add_command(train)
