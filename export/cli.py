"""``meltok-export`` command line: a thin layer over ``export_bundle`` and ``verify_bundle``.

    meltok-export MODEL -o BUNDLE [--engine onnx|trt] [--precision fp32|fp16|int8] [--max-seconds S]
                  [--opt-seconds S] [--max-batch B] [--version-compatible] [--stream-profile]
                  [--timing-cache PATH] [--force]
    meltok-export verify BUNDLE -m MODEL
    meltok-export annotate BUNDLE
"""
import json
import logging

import click

from meltok_runtime.cli.shared import (CommandGroup, require_packages, setup_logging, user_errors, verbose_option,
                                        version_option)

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
                              "[-v] MODEL -o BUNDLE [OPTIONS] | verify BUNDLE -m MODEL | annotate BUNDLE")


@click.group(cls=_ExportByDefault)
@verbose_option
@version_option
def main(verbose):
    """Export a MelTok model to a bundle (ONNX graphs, optional TensorRT engines, manifest) that
    meltok-rt runs without PyTorch; `export` is the default command. Needs the `export` extra."""
    require_packages(("torch", "safetensors", "onnx"), "export")
    setup_logging(verbose)
    logging.getLogger("meltok_export").setLevel(logging.INFO)  # export steps take a while: show progress


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
@click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Longest input per call the engines accept [default: one runtime window, about 12 s].")
@click.option("--opt-seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Input length the engines are tuned for [default: one runtime window].")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="Largest batch the engines accept.")
@click.option("--version-compatible", is_flag=True,
              help="TensorRT engines that also run on later TensorRT 10.x/11.x releases and on the lean runtime "
                   "(`pip install -e '.[trt]'`), at some speed cost.")
@click.option("--stream-profile", is_flag=True,
              help="TensorRT engines with a second optimisation profile tuned for stream-sized calls (about 1 s).")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="TensorRT timing cache to read and update [default: ~/.cache/meltok/tensorrt-timing.cache].")
@click.option("--force", is_flag=True, help="Replace a previous bundle at BUNDLE.")
@user_errors
def export(model_path, output, engine, precision, max_seconds, opt_seconds, max_batch, version_compatible,
           stream_profile, timing_cache, force):
    """Export MODEL (a meltok model file) to the bundle folder BUNDLE, verified against the model."""
    from .bundle import check_destination, export_bundle

    check_destination(output, force=force)  # before loading anything
    if engine == "trt":
        from meltok_runtime.engines.builder import require_builder

        require_builder()
    model = _load_model(model_path)
    manifest = export_bundle(model, output, engine=engine, precision=precision, max_seconds=max_seconds,
                             opt_seconds=opt_seconds, max_batch=max_batch, version_compatible=version_compatible,
                             stream_profile=stream_profile, timing_cache=timing_cache, force=force)
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
