"""``meltok-export`` command line: a thin layer over ``export_bundle`` and ``verify_bundle``.

    meltok-export MODEL -o BUNDLE [--engine onnx|trt] [--precision fp32|fp16|int8] [--max-seconds S]
                  [--opt-seconds S] [--max-batch B] [--version-compatible] [--stream-profile]
                  [--timing-cache PATH] [--force]
    meltok-export verify BUNDLE -m MODEL
    meltok-export triton BUNDLE -o REPO [--engines] [--max-batch-size B] [--cpu] [--trt-accelerator] [--force]
    meltok-export annotate BUNDLE

``export`` and ``verify`` need torch (the `export` extra); ``triton`` and ``annotate`` need only the bundle.
"""
import json
import logging

import click

from meltok_runtime.cli.shared import (CommandGroup, engine_build_options, require_packages, setup_logging,
                                        user_errors, verbose_option, version_option)

log = logging.getLogger("meltok_export")


class _ExportByDefault(CommandGroup):
    """A group whose ``export`` subcommand may be left out: ``meltok-export MODEL -o BUNDLE``."""

    default_command = "export"

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            return self.default_command, self.commands[self.default_command], args
        return super().resolve_command(ctx, args)

    def format_usage(self, ctx, formatter):
        formatter.write_usage(ctx.command_path,
                              "[-v] MODEL -o BUNDLE [OPTIONS] | verify BUNDLE -m MODEL | triton BUNDLE -o REPO | annotate BUNDLE")


@click.group(cls=_ExportByDefault)
@verbose_option
@version_option
def main(verbose):
    """Export a MelTok model to a bundle (ONNX graphs, optional TensorRT engines, manifest) that
    meltok-rt runs without PyTorch; `export` is the default command (it and `verify` need the
    `export` extra). `triton` writes a Triton Inference Server model repository from a bundle."""
    setup_logging(verbose)
    logging.getLogger("meltok_export").setLevel(logging.INFO)  # export steps take a while: show progress


def _require_export_extra():
    require_packages(("torch", "safetensors", "onnx"), "export")


def _load_model(path):
    from meltok import MelTok
    from meltok.loaders import load_model

    return load_model(MelTok, path)


@main.command("export")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Bundle folder to write: a new folder, or a previous bundle with --force.")
@click.option("--engine", type=click.Choice(["onnx", "trt"]), default="onnx", show_default=True,
              help="trt also builds TensorRT engines (needs TensorRT's builder and an NVIDIA GPU).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True,
              help="fp16: float16 convolution trunk with float32 islands (log-mel, VQ, ISTFT head); int8: the trunk "
                   "quantized for ONNX Runtime on the CPU (calibrated on real audio), the same float32 islands.")
@engine_build_options
@click.option("--tokens-of", "tokens_of", multiple=True, type=click.Path(dir_okay=False), metavar="MODEL",
              help="Also decode the token files of MODEL (a model file with the same front end, encoder, quant_conv "
                   "and codebook: checked), e.g. an earlier default whose decoder this model replaces. Repeatable.")
@click.option("-y", "--force", is_flag=True, help="Replace a previous bundle at BUNDLE.")
@user_errors
def export(model_path, output, engine, precision, max_seconds, opt_seconds, max_batch, version_compatible,
           stream_profile, timing_cache, tokens_of, force):
    """Export MODEL (a meltok model file) to the bundle folder BUNDLE, verified against the model."""
    _require_export_extra()
    from .bundle import check_destination, export_bundle

    check_destination(output, force=force)  # before loading anything
    if engine == "trt":
        from meltok_runtime.engines.builder import require_builder

        require_builder()
    model = _load_model(model_path)
    manifest = export_bundle(model, output, engine=engine, precision=precision, max_seconds=max_seconds,
                             opt_seconds=opt_seconds, max_batch=max_batch, version_compatible=version_compatible,
                             stream_profile=stream_profile, timing_cache=timing_cache,
                             tokens_of=[_load_model(path) for path in tokens_of], force=force)
    figures = manifest.tolerances["onnxruntime"]
    click.echo(f"wrote {output}: {manifest.model_id}, {precision}, "
               f"{'ONNX + TensorRT engines' if manifest.engines else 'ONNX'}; token agreement "
               f"{figures['token_agreement']:.2%}, waveform SNR {figures['waveform_snr_db']:.1f} dB"
               + (f", mel distance {figures['mel_distance']:.3f}" if figures.get("mel_distance") is not None else ""))


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("-m", "--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="The model file the bundle was exported from.")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@user_errors
def verify(bundle, model_path, as_json):
    """Rerun the verification of BUNDLE against MODEL (ONNX Runtime; TensorRT engines where available)."""
    _require_export_extra()
    from .verify import verify_bundle

    report = verify_bundle(bundle, _load_model(model_path))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{bundle}: passed ({report['backend']}, {report['precision']}): token agreement "
               f"{report['token_agreement']:.2%}, waveform SNR {report['waveform_snr_db']:.1f} dB, "
               f"mel error {report['mel_mean_error']:.2g}"
               + (f", mel distance {report['mel_distance']:.3f}" if report.get("mel_distance") is not None else ""))
    for part, label in (("ort_cuda", "ONNX Runtime CUDA"), ("tensorrt", "TensorRT")):
        gpu = report.get(part, {})
        if "skipped" in gpu:
            click.echo(f"{label}: not verified ({gpu['skipped']})")
        elif gpu:
            click.echo(f"{label}: passed: token agreement {gpu['token_agreement']:.2%} (with ort-cpu "
                       f"{gpu['vs_onnxruntime']['token_agreement']:.2%}), waveform SNR {gpu['waveform_snr_db']:.1f} dB")


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Model repository folder to write: a new folder, or an earlier repository with --force.")
@click.option("--engines", is_flag=True,
              help="Serve the bundle's TensorRT engines (tensorrt_plan models) instead of its ONNX graphs.")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=None,
              help="max_batch_size of the graph models [default: the bundle's max_batch, at most its engines'].")
@click.option("--preferred-batch-size", "preferred", type=click.IntRange(min=1), multiple=True,
              help="Dynamic batching's preferred batch size (repeatable) [default: 2, 4, ... up to max_batch_size].")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=2000, show_default=True,
              help="Longest wait of a request for others to batch with, in microseconds.")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="Instances of each graph model.")
@click.option("--cpu", is_flag=True, help="Run the graph models on the CPU (KIND_CPU) instead of the GPU.")
@click.option("--trt-accelerator", is_flag=True,
              help="ONNX Runtime graph models with TensorRT as their GPU execution accelerator (FP32).")
@click.option("--trt-fp16", is_flag=True,
              help="With --trt-accelerator: TensorRT's FP16 mode, for the whole graph (the float32 islands "
                   "included; not verified by meltok).")
@click.option("--pipeline-instances", type=click.IntRange(min=1), default=4, show_default=True,
              help="Instances of the Python pipeline model (CPU): the requests it serves at once.")
@click.option("-y", "--force", is_flag=True, help="Replace an earlier repository at REPO.")
@user_errors
def triton(bundle, output, engines, max_batch_size, preferred, max_queue_delay_us, instances, cpu, trt_accelerator,
           trt_fp16, pipeline_instances, force):
    """Write a Triton Inference Server model repository REPO from the bundle folder BUNDLE (no torch
    needed): the encoder and decoder graph models and the `meltok` Python pipeline model."""
    from .triton_repository import TritonOptions, describe, write_triton_repository

    options = TritonOptions(engines=engines, max_batch_size=max_batch_size,
                            preferred_batch_sizes=tuple(preferred) or None, max_queue_delay_us=max_queue_delay_us,
                            instances=instances, cpu=cpu, trt_accelerator=trt_accelerator, trt_fp16=trt_fp16,
                            pipeline_instances=pipeline_instances)
    write_triton_repository(bundle, output, options, force=force)
    click.echo(f"wrote {output}: start it with `tritonserver --model-repository {output}`\n{describe(output)}")


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@user_errors
def annotate(bundle):
    """Add to BUNDLE, exported before meltok stored them, what `meltok-rt engines` needs: the names of its
    float32 layers, a verification clip with ONNX Runtime CPU's tokens, and the trtexec/polygraphy lines.
    Reads only the bundle's own graphs (no model file)."""
    from .bundle import annotate_bundle

    manifest = annotate_bundle(bundle)
    click.echo(f"{bundle}: added {manifest.verification['file']} ({manifest.verification['samples']} samples), "
               f"float32 layer names of {', '.join(sorted(manifest.float32_nodes))}, tensorrt-commands.json")
