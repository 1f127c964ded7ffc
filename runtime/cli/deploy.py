"""``meltok-rt engines``, ``doctor`` and ``bench``: deploying a bundle on the machine that runs it.

Thin commands over ``meltok_runtime.engines`` (build TensorRT engines here, without PyTorch),
``meltok_runtime.deploy.doctor`` (what this machine has and whether a bundle runs on it) and
``meltok_runtime.deploy.bench`` (latency and throughput of the backends this machine has).
"""
import json
import sys
from pathlib import Path

import click

from meltok_runtime.backends import BACKEND_CHOICES
from meltok_runtime.cli.shared import engine_build_options, user_errors

bundle_option = click.option("-b", "--bundle", type=click.Path(file_okay=False), default=None,
                             help="Bundle folder; default: the bundle shipped with meltok_runtime.")
backend_option = click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True,
                              help="The backend to check or time; auto: the one `meltok-rt` would pick.")


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default=None,
              help="Engine precision [default: the bundle's graphs']. fp16 from an fp32 bundle: TensorRT 10 only, "
                   "with its float32 layers pinned.")
@engine_build_options
@click.option("-y", "--force", is_flag=True, help="Replace the bundle's engines.")
@user_errors
def engines(bundle, precision, max_seconds, opt_seconds, max_batch, stream_profile, version_compatible,
            timing_cache, force):
    """Build TensorRT engines for BUNDLE on this machine (no PyTorch, no model file), check them against
    ONNX Runtime CPU on the bundle's verification clip, and add them to the bundle."""
    from meltok_runtime.engines.bundle import add_engines
    from meltok_runtime.engines.plan import EngineOptions

    options = EngineOptions(precision=precision, max_seconds=max_seconds, opt_seconds=opt_seconds,
                            max_batch=max_batch, stream_profile=stream_profile,
                            version_compatible=version_compatible, timing_cache=timing_cache)
    manifest = add_engines(bundle, options, force=force)
    check = manifest.tolerances["tensorrt_here"]
    engine = manifest.engines[0]
    click.echo(f"added {engine.precision} TensorRT {engine.tensorrt_version} engines for {engine.device_name} (compute "
               f"capability {engine.compute_capability}) to {bundle}: token agreement with ONNX Runtime CPU "
               f"{check['token_agreement']:.2%}, decoder SNR {check['waveform_snr_db']:.1f} dB")


@click.command()
@bundle_option
@backend_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@user_errors
def doctor(bundle, backend, as_json):
    """What this machine has (Python, ONNX Runtime and its providers, CUDA, GPU, TensorRT, Jetson), whether
    the bundle runs here with BACKEND, and how to fix each problem. Exit status 1 when it does not run."""
    from meltok_runtime.deploy.doctor import diagnose, render

    report = diagnose(bundle, backend)
    click.echo(json.dumps(report, indent=2) if as_json else render(report))
    if not report["runs"]:
        sys.exit(1)


@click.command()
@bundle_option
@click.option("--backend", "backends", multiple=True, type=click.Choice(BACKEND_CHOICES), default=("auto",),
              show_default=True, help="Backend to time (repeatable); auto: every backend that runs here.")
@click.option("--seconds", default="1,10,60", show_default=True, help="Comma-separated input lengths.")
@click.option("--batch", "batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="The larger batch (the other is 1).")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--stream-seconds", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Audio streamed for the stream rows (0: none).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads per graph.")
@click.option("--budget-seconds", type=click.FloatRange(min=0), default=120.0, show_default=True,
              help="Leave out (as not run) a configuration estimated to take longer.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the report here.")
@user_errors
def bench(bundle, backends, seconds, batch, repeats, stream_seconds, threads, budget_seconds, json_path):
    """Latency and throughput of encode and decode (batch 1 and N) and streams, per backend this machine
    has, with doctor's description of the machine."""
    from meltok_runtime.deploy.bench import BenchSettings, render, run_bench, write_report

    lengths = tuple(float(s) for s in seconds.split(",") if s.strip())
    settings = BenchSettings(seconds=lengths, batch=batch, repeats=repeats, stream_seconds=stream_seconds,
                             threads=threads, budget_seconds=budget_seconds)
    report = run_bench(bundle, backends, settings)
    click.echo(render(report))
    if json_path:
        write_report(report, Path(json_path))
        click.echo(f"wrote {json_path}")


COMMANDS = (engines, doctor, bench)
