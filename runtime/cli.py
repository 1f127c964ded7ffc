"""``meltok-rt`` command line: encode and decode with an exported bundle, without torch.

A thin layer over ``meltok_runtime``: token files are the ones ``meltok encode`` writes (same
``write_tokens`` call), so either tool decodes the other's files.
"""
import json
import logging
import sys
from pathlib import Path

import click

from .backends import BACKEND_CHOICES
from .cli_support import (force_option, original_rate_option, progress_bar, report_rate, setup_logging,
                          subtype_option, user_errors, verbose_option)

log = logging.getLogger("meltok_runtime")

bundle_option = click.option(
    "-b", "--bundle", type=click.Path(file_okay=False), default=None,
    help="Bundle folder written by meltok-export; default: the bundle shipped with meltok_runtime.")
backend_option = click.option(
    "--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True,
    help="Inference backend; auto tries trt, then ort-cuda, then ort-cpu.")
threads_option = click.option("--threads", type=click.IntRange(min=1), default=None,
                              help="CPU threads per graph (default: all cores).")


def _open_codec(bundle, backend, threads):
    from .codec import Codec

    codec = Codec.open(bundle, backend=backend, threads=threads)
    log.info("using backend %s", codec.backend)
    return codec


@click.group()
@verbose_option
def main(verbose):
    """MelTok runtime: 44.1 kHz audio <-> tokens with an exported bundle (ONNX Runtime or TensorRT)."""
    setup_logging(verbose)


@main.command()
@click.argument("audio", type=click.Path())
@bundle_option
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Token file to write (.mtok).")
@backend_option
@threads_option
@force_option
@user_errors
def encode(audio, bundle, output, backend, threads, force):
    """Encode an audio file (any format soundfile reads) to a token file."""
    from .codec_files import encode_file

    with _open_codec(bundle, backend, threads) as codec, progress_bar("encoding") as progress:
        written = encode_file(codec, audio, output, force=force, progress=progress)
    click.echo(f"wrote {output}: {written.tokens.shape[-1]} columns x {written.tokens.shape[1]} rows "
               f"({written.num_samples[0] / codec.sample_rate:.2f} s, backend {codec.backend})")


@main.command()
@click.argument("tokens", type=click.Path())
@bundle_option
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Audio file to write; the format follows the suffix (.wav, .flac, .ogg).")
@backend_option
@threads_option
@original_rate_option
@subtype_option
@force_option
@user_errors
def decode(tokens, bundle, output, backend, threads, original_rate, subtype, force):
    """Decode a token file to audio (at 44.1 kHz unless --original-rate), each item trimmed to its encoded length."""
    from .codec_files import decode_file

    with _open_codec(bundle, backend, threads) as codec, progress_bar("decoding") as progress:
        written = decode_file(codec, tokens, output, original_rate=original_rate, force=force, subtype=subtype,
                              progress=progress)
    report_rate(written.sample_rate, codec.sample_rate, written.recorded_rate)
    click.echo(f"wrote {output}: {max(written.num_samples) / written.sample_rate:.2f} s at {written.sample_rate} Hz "
               f"(backend {codec.backend})")


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False), required=False)
@backend_option
@threads_option
@user_errors
def info(bundle, backend, threads):
    """Describe a bundle (default: the shipped one) and the backends that can run it here."""
    from .backends import availability
    from .codec import default_bundle
    from .errors import MeltokError
    from .manifest import load_manifest

    path = Path(bundle) if bundle is not None else default_bundle()
    manifest = load_manifest(path, verify_files=False)  # opening the codec below hashes each graph once
    report = {
        "bundle": str(path), "model_id": manifest.model_id, "model_name": manifest.model_name,
        "format_version": manifest.format_version, "sample_rate": manifest.sample_rate,
        "hop_length": manifest.hop_length, "token_rows": manifest.token_rows,
        "codebook_size": manifest.codebook_size, "token_rate": manifest.token_rate, "opset": manifest.opset,
        "graphs": {name: {"file": g.file, "precision": g.precision} for name, g in manifest.graphs.items()},
        "engines": [{"graph": e.graph, "file": e.file, "precision": e.precision, "tensorrt": e.tensorrt_version,
                     "compute_capability": e.compute_capability, "device": e.device_name}
                    for e in manifest.engines],
        "limits": manifest.limits, "tolerances": manifest.tolerances,
        "backends": {name: "available" if why is None else f"unavailable: {why}"
                     for name, why in availability(path, manifest).items()},
    }
    try:
        with _open_codec(path, backend, threads) as codec:
            report["selected_backend"] = codec.backend
    except MeltokError as error:
        report["selected_backend"] = None
        report["selection_error"] = str(error)
    click.echo(json.dumps(report, indent=2))
    if report["selected_backend"] is None:
        sys.exit(1)
