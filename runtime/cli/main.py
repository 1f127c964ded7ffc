"""``meltok-rt`` command line: encode and decode with an exported bundle, without torch.

A thin layer over ``meltok_runtime``: token files are the ones ``meltok encode`` writes (same
``write_tokens`` call), so either tool decodes the other's files.
"""
import json
import logging
import os
import sys
from pathlib import Path

import click

from meltok_runtime.backends import BACKEND_CHOICES
from meltok_runtime.serve.protocol import STREAM_CONTEXT_SECONDS, STREAM_STEP_SECONDS
from meltok_runtime.cli.deploy import COMMANDS as DEPLOY_COMMANDS
from meltok_runtime.cli.shared import (CommandGroup, check_stream_output, decode_source, decoded_output_option, encode_source,
                          force_option, original_rate_option, progress_bar, require_packages, setup_logging, stdin_options,
                          stream_options, subtype_option, user_errors, verbose_option, version_option)

log = logging.getLogger("meltok_runtime")

bundle_option = click.option(
    "-b", "--bundle", type=click.Path(file_okay=False), default=None,
    help="Bundle folder written by meltok-export; default: the bundle shipped with meltok_runtime.")
backend_option = click.option(
    "--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True,
    help="Inference backend; auto tries trt, then ort-cuda, then ort-cpu.")
threads_option = click.option("--threads", type=click.IntRange(min=1), default=None,
                              help="CPU threads per graph (default and most: the cores this process may use).")


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _checked_threads(threads):
    cores = _usable_cores()
    if threads is not None and threads > cores:  # oversubscribed threads run many times slower
        log.warning("--threads %d is more than the %d CPU core(s) this process may use: using %d", threads, cores,
                    cores)
        threads = cores
    return threads


def _open_codec(bundle, backend, threads):
    from meltok_runtime.codec import Codec

    codec = Codec.open(bundle, backend=backend, threads=_checked_threads(threads))
    log.info("using backend %s", codec.backend)
    return codec


@click.group(cls=CommandGroup)
@verbose_option
@version_option
def main(verbose):
    """MelTok runtime: 44.1 kHz audio <-> tokens with an exported bundle (ONNX Runtime or TensorRT)."""
    setup_logging(verbose)


@main.command()
@click.argument("audio", type=click.Path(allow_dash=True))
@bundle_option
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Token file to write (.mtok).")
@backend_option
@threads_option
@force_option
@stdin_options
@user_errors
def encode(audio, bundle, output, backend, threads, force, input_format, rate, channels, live, lookahead):
    """Encode an audio file (any format soundfile reads) to a token file; AUDIO = - reads standard input (a WAV,
    or raw PCM) to its end and encodes it as a file, or with --live as it arrives."""
    with _open_codec(bundle, backend, threads) as codec, progress_bar("encoding") as progress:
        written = encode_source(codec, audio, output, force=force, progress=progress, input_format=input_format,
                                rate=rate, channels=channels, live=live, lookahead=lookahead)
    click.echo(f"wrote {output}: {written.tokens.shape[-1]} columns x {written.tokens.shape[1]} rows "
               f"({written.num_samples[0] / codec.sample_rate:.2f} s, backend {codec.backend})")


@main.command()
@click.argument("tokens", type=click.Path())
@bundle_option
@decoded_output_option
@backend_option
@threads_option
@original_rate_option
@subtype_option
@force_option
@stream_options
@user_errors
def decode(tokens, bundle, output, backend, threads, original_rate, subtype, force,
           **streaming):
    """Decode a token file to audio (at 44.1 kHz unless --original-rate), each item trimmed to its encoded length;
    --stream -o - writes it to standard output as it is decoded."""
    check_stream_output(output, streaming["stream"])
    with _open_codec(bundle, backend, threads) as codec, progress_bar("decoding") as progress:
        written = decode_source(codec, tokens, output, original_rate=original_rate, force=force, subtype=subtype,
                                progress=progress, **streaming)
    if written is None:  # streamed to standard output
        return
    click.echo(f"wrote {output}: {max(written.num_samples) / written.sample_rate:.2f} s at {written.sample_rate} Hz "
               f"(backend {codec.backend})")


@main.command()
@click.argument("path", metavar="[BUNDLE | TOKENS]", type=click.Path(), required=False)
@backend_option
@threads_option
@user_errors
def info(path, backend, threads):
    """Describe a token file, or a bundle (default: the shipped one) and the backends that can run it here."""
    from meltok_runtime.backends import availability
    from meltok_runtime.codec import default_bundle
    from meltok_runtime.errors import MeltokError
    from meltok_runtime.manifest import load_manifest
    from meltok_runtime.io.tokenfile import read_tokens

    if path is not None and Path(path).is_file():
        click.echo(json.dumps(read_tokens(path).describe(), indent=2))
        return
    path = Path(path) if path is not None else default_bundle()
    manifest = load_manifest(path, verify_files=False)  # opening the codec below hashes each graph once
    report = {
        "bundle": str(path), "model_id": manifest.model_id, "model_name": manifest.model_name,
        "format_version": manifest.format_version, "sample_rate": manifest.sample_rate,
        "hop_length": manifest.hop_length, "token_rows": manifest.token_rows,
        "codebook_size": manifest.codebook_size, "token_rate": manifest.token_rate, "opset": manifest.opset,
        "graphs": {name: {"file": g.file, "precision": g.precision} for name, g in manifest.graphs.items()},
        "engines": [{"graph": e.graph, "file": e.file, "precision": e.precision, "tensorrt": e.tensorrt_version,
                     "compute_capability": e.compute_capability, "device": e.device_name,
                     "version_compatible": e.version_compatible, "stream_profile": bool(e.stream_profile)}
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


@main.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="Dataset folder (new, empty, or one to resume).")
@bundle_option
@backend_option
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Encoder processes (Ray: actors), each with cores / workers threads.")
@threads_option
@click.option("--shard-rows", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Most items per Parquet shard.")
@click.option("--commit-seconds", type=click.FloatRange(min=0, min_open=True), default=60, show_default=True,
              help="Commit a shard at least this often, so a kill loses at most about this much work.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run on Ray Data: a local instance, or the cluster at ADDRESS (e.g. auto, ray://head:10001).")
@click.option("--actors-per-gpu", type=click.IntRange(min=1), default=2, show_default=True,
              help="Ray with --backend ort-cuda or trt: encoder actors sharing one GPU.")
@user_errors
def tokenize(sources, output, bundle, backend, workers, threads, shard_rows, commit_seconds, ray_address,
             actors_per_gpu):
    """Tokenize audio folders, files or manifests (.txt, .csv, .tsv, .jsonl) into a Parquet dataset; resumable
    (Ctrl-C and SIGTERM stop it cleanly)."""
    from meltok_runtime.dataset.job import tokenize as run

    try:
        with progress_bar("tokenizing") as progress:  # by input bytes: a better measure of the work left than items
            summary = run(sources, output, bundle=bundle, backend=backend, workers=workers, threads=threads,
                          shard_rows=shard_rows, commit_seconds=commit_seconds, ray_address=ray_address,
                          actors_per_gpu=actors_per_gpu,
                          progress=lambda job: progress(job.bytes_done, job.bytes_total, job.describe()))
    except KeyboardInterrupt:
        click.echo("interrupted; the shards written so far are kept: run the same command to resume", err=True)
        sys.exit(130)
    counts = summary["counts"]
    click.echo(f"wrote {output}: {counts['items']} items ({summary['hours']:.3f} h) in {counts['shards']} shards, "
               f"{counts['failed']} failed (listed in {output}/dataset.json)")


@main.command()
@click.argument("dataset", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder for the audio files.")
@bundle_option
@backend_option
@threads_option
@click.option("--ids", multiple=True, help="Decode only these items (repeat the option).")
@click.option("--format", "audio_format", type=click.Choice(["wav", "flac"]), default="wav", show_default=True,
              help="Audio file format (WAV: 32-bit float; FLAC: 24-bit).")
@original_rate_option
@click.option("--keep-suffix", is_flag=True,
              help="Name files after whole ids (a.flac -> a.flac.wav) instead of replacing an audio suffix "
                   "(a.flac -> a.wav); needed when two ids differ only in their suffix.")
@click.option("-y", "--force", is_flag=True, help="Rewrite audio files that already exist (default: skip them).")
@user_errors
def detokenize(dataset, output, bundle, backend, threads, ids, audio_format, original_rate, keep_suffix, force):
    """Decode a token dataset (or Parquet rows in its schema) to audio files; resumable."""
    from meltok_runtime.dataset.decode import detokenize as run
    from meltok_runtime.dataset.job import terminate_as_interrupt

    if original_rate:
        click.echo("writing each item at its source file's sample rate (--original-rate)", err=True)
    try:
        with terminate_as_interrupt(), progress_bar("decoding") as progress:
            summary = run(dataset, output, bundle=bundle, backend=backend, threads=threads, ids=list(ids) or None,
                          force=force, suffix=f".{audio_format}", keep_suffix=keep_suffix,
                          original_rate=original_rate,
                          progress=lambda job: progress(job.items_done, job.items_total, job.describe()))
    except KeyboardInterrupt:
        click.echo("interrupted; the files written so far are complete and kept: run the same command to resume",
                   err=True)
        sys.exit(130)
    for failure in summary["failures"]:
        click.echo(f"failed {failure['id']}: {failure['reason']}", err=True)
    click.echo(f"wrote {summary['written']} files to {output}, {summary['skipped']} already there, "
               f"{len(summary['failures'])} failed")


@main.command()
@bundle_option
@backend_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True, help="TCP port.")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="Items per graph call (1: every call alone); at most the bundle's max_batch.")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="How long a graph call waits for others of its shape to share it.")
@click.option("--concurrent-calls", type=click.IntRange(min=1), default=None,
              help="Graph calls run at once per graph, each a batch  [default: 4 on ort-cpu, else 1].")
@click.option("--max-streams", type=click.IntRange(min=1), default=64, show_default=True,
              help="Open WebSocket streams; more are closed with 1013 (try again later).")
@click.option("--max-queue", type=click.IntRange(min=1), default=64, show_default=True,
              help="Offline requests served at once; more get 503 with Retry-After.")
@click.option("--stream-context-seconds", type=click.FloatRange(min=0, max=60), default=STREAM_CONTEXT_SECONDS,
              show_default=True, help="Streams' left context per window; a stream may ask for less, never more.")
@click.option("--stream-step-seconds", type=click.FloatRange(min=0, max=60, min_open=True),
              default=STREAM_STEP_SECONDS, show_default=True,
              help="Audio each stream window keeps: the longer, the less compute per second of audio and the more "
                   "latency; a stream may ask for more, never less.")
@threads_option
@click.option("--token", envvar="MELTOK_SERVE_TOKEN", default=None,
              help="Require 'Authorization: Bearer TOKEN' on every endpoint but /health (env MELTOK_SERVE_TOKEN).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run as a Ray Serve deployment: on a local instance, or the cluster at ADDRESS.")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --ray: replicas of the deployment, each with its own codec.")
@user_errors
def serve(bundle, backend, host, port, max_batch, max_wait_ms, concurrent_calls, max_streams, max_queue,
          stream_context_seconds, stream_step_seconds, threads, token, ray_address, replicas):
    """Serve the codec over HTTP and WebSocket (README, "Serving"): /health, /metrics, /v1/encode, /v1/decode,
    /v1/stream/decode, /v1/stream/encode; SIGTERM drains and exits 0."""
    require_packages(["starlette", "uvicorn", "prometheus_client", "websockets"], "serve")
    from meltok_runtime.serve.app import ServeConfig

    config = ServeConfig(bundle=bundle, backend=backend, threads=_checked_threads(threads), max_batch=max_batch,
                         max_wait_ms=max_wait_ms, concurrent_calls=concurrent_calls, max_streams=max_streams,
                         max_queue=max_queue, token=token,
                         stream_context_seconds=stream_context_seconds, stream_step_seconds=stream_step_seconds)
    if host not in ("127.0.0.1", "localhost", "::1") and token is None:
        log.warning("serving on %s without --token: anyone who can reach this address can use it", host)
    if ray_address is not None:
        require_packages(["ray"], "serve-ray")
        from meltok_runtime.serve.ray_serve import run_ray

        click.echo(f"serving on Ray Serve at http://{host}:{port} ({replicas} replica(s)); Ctrl-C stops", err=True)
        run_ray(config, address=ray_address, replicas=replicas, host=host, port=port)
        return
    from meltok_runtime.serve.server import run

    click.echo(f"serving on http://{host}:{port}", err=True)
    run(config, host=host, port=port)


for _command in DEPLOY_COMMANDS:
    main.add_command(_command)
