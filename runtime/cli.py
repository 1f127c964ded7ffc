"""``meltok-rt`` command line: encode and decode with an exported bundle, without torch.

A thin layer over ``meltok_runtime``: token files are the ones ``meltok encode`` writes (same
``write_tokens`` call), so either tool decodes the other's files.
"""
import contextlib
import json
import logging
import sys
from pathlib import Path

import click

from .backends import BACKEND_CHOICES
from .cli_support import (check_stream_output, decode_stream, decoded_output_option, encode_stdin, load_for_encoding,
                          setup_logging, stdin_options, stream_options, user_errors, verbose_option, write_decoded)

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


@contextlib.contextmanager
def _progress(total: int, label: str):
    """A progress callback drawing a bar on stderr when there is more than one window."""
    if total <= 1:
        yield None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield lambda done, _total: bar.update(done - bar.pos)


@click.group()
@verbose_option
def main(verbose):
    """MelTok runtime: 44.1 kHz audio <-> tokens with an exported bundle (ONNX Runtime or TensorRT)."""
    setup_logging(verbose)


@main.command()
@click.argument("audio", type=click.Path(allow_dash=True))
@bundle_option
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Token file to write (.mtok).")
@backend_option
@threads_option
@stdin_options
@user_errors
def encode(audio, bundle, output, backend, threads, input_format, rate, channels, lookahead):
    """Encode an audio file (any format soundfile reads) to a token file; AUDIO = - streams raw PCM
    from standard input, encoded as it arrives."""
    from .atomic import check_output_path
    from .tokenfile import write_tokens

    check_output_path(output)
    with _open_codec(bundle, backend, threads) as codec:
        if audio == "-":
            tokens, samples = encode_stdin(codec, input_format, rate, channels, lookahead)
        else:
            batch = load_for_encoding(audio, codec.sample_rate)
            samples = batch.shape[-1]
            with _progress(codec.encode_windows(samples), "encoding") as progress:
                tokens = codec.encode(batch, codec.sample_rate, progress=progress)
    write_tokens(output, tokens, sample_rate=codec.sample_rate, num_samples=samples,
                 model_id=codec.model_id, codebook_size=codec.codebook_size)
    click.echo(f"wrote {output}: {tokens.shape[-1]} columns x {tokens.shape[1]} rows "
               f"({samples / codec.sample_rate:.2f} s, backend {codec.backend})")


@main.command()
@click.argument("tokens", type=click.Path())
@bundle_option
@decoded_output_option
@backend_option
@threads_option
@stream_options
@user_errors
def decode(tokens, bundle, output, backend, threads, stream, stream_format, push_columns, lookahead):
    """Decode a token file to audio at 44.1 kHz, each item trimmed to its encoded length."""
    from .tokenfile import check_token_file, read_tokens

    check_stream_output(output, stream)
    token_file = read_tokens(tokens)
    with _open_codec(bundle, backend, threads) as codec:
        check_token_file(token_file, model_id=codec.model_id, sample_rate=codec.sample_rate, source=tokens)
        array = token_file.tokens
        if stream:
            audio = decode_stream(codec, token_file, output, stream_format, push_columns, lookahead)
        else:
            with _progress(codec.decode_windows(array.shape[-1], array.shape[0]), "decoding") as progress:
                audio = codec.decode(array, num_samples=max(token_file.num_samples), progress=progress)
    if audio is not None:
        write_decoded(output, audio, token_file.num_samples, codec.sample_rate)
    click.echo(f"wrote {output}: {max(token_file.num_samples) / codec.sample_rate:.2f} s at {codec.sample_rate} Hz "
               f"(backend {codec.backend})", err=output == "-")


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
    manifest = load_manifest(path)
    report = {
        "bundle": str(path), "model_id": manifest.model_id, "model_name": manifest.model_name,
        "format_version": manifest.format_version, "sample_rate": manifest.sample_rate,
        "hop_length": manifest.hop_length, "token_rows": manifest.token_rows,
        "codebook_size": manifest.codebook_size, "token_rate": manifest.token_rate, "opset": manifest.opset,
        "graphs": {name: {"file": g.file, "precision": g.precision} for name, g in manifest.graphs.items()},
        "engines": [{"graph": e.graph, "file": e.file, "precision": e.precision, "tensorrt": e.tensorrt_version,
                     "compute_capability": e.compute_capability, "device": e.device_name}
                    for e in manifest.engines],
        "limits": manifest.limits, "tolerances": manifest.tolerances, "streaming": manifest.streaming,
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
