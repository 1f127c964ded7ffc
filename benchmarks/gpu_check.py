"""The GPU check in one command: ``python -m benchmarks.gpu_check`` (from the repository root).

On a machine with an NVIDIA GPU (and the extras of the README's GPU rows installed), within about
8 minutes:

1. runs the tests marked ``gpu`` or ``trt`` (``pytest -m "gpu or trt"``);
2. encodes real audio (``tests/data``) with the shipped model on every GPU backend that can run here
   (``ort-cuda``; ``trt`` where TensorRT's builder can make engines) and compares the tokens with
   ``ort-cpu``: fp32 bundles must give identical tokens (TF32 is off everywhere), fp16 bundles at
   least ``FP16_AGREEMENT`` of them;
3. prints the latency table of ``meltok-rt bench`` (``meltok_runtime.deploy.bench``) for the shipped
   model on ``ort-cuda`` and its engines on ``trt`` (PyTorch on the GPU: ``python -m benchmarks.speed``).

Each step gets what is left of ``--budget-seconds``; a step that cannot run says why. A row or step
that did not run (no onnxruntime-gpu, no TensorRT builder, out of time) fails the check: exit status 0
only when everything ran and passed, or, with ``--allow-partial``, when everything that ran passed (the
last line then says "passed (partial: N not run)"). Without an NVIDIA GPU it says so in one line and exits 1.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ("music.flac", "speech.flac", "effects.flac")
FP16_AGREEMENT = 0.99
GPU_BACKENDS = ("ort-cuda", "trt")


def gpu_present() -> str | None:
    """None where the NVIDIA driver sees a GPU, else why not (one line)."""
    from meltok_runtime.backends.cuda import driver_device_count
    from meltok_runtime.errors import MeltokError

    try:
        count = driver_device_count()
    except MeltokError as error:
        return str(error)
    return None if count else "the NVIDIA driver sees no GPU"


def real_audio(seconds: float = 4.0) -> np.ndarray:
    """``[len(CLIPS), seconds * 44100]`` float32: the first seconds of each test clip, mono."""
    from meltok_runtime.io.audio import load_audio, prepare_audio

    rows = []
    for name in CLIPS:
        audio, rate = load_audio(ROOT / "tests" / "data" / name)
        mono = prepare_audio(audio[None], rate)[0][0][: int(seconds * 44100)]
        rows.append(np.pad(mono, (0, int(seconds * 44100) - mono.shape[0])))
    return np.stack(rows).astype(np.float32)


def compare_backends(bundle, audio: np.ndarray, backends=GPU_BACKENDS) -> list[dict]:
    """Token agreement of each GPU backend with ort-cpu on ``audio``; a backend that cannot run says why."""
    from meltok_runtime import Codec
    from meltok_runtime.errors import MeltokError

    with Codec.open(bundle, backend="ort-cpu") as reference:
        expected = reference.encode(audio)
        precision = reference.manifest.graphs["encoder"].precision
    rows = []
    for name in backends:
        row = {"bundle": str(bundle), "precision": precision, "backend": name}
        try:
            with Codec.open(bundle, backend=name) as codec:
                tokens = codec.encode(audio)
        except MeltokError as error:
            rows.append({**row, "status": f"not run: {error}"})
            continue
        agreement = float(np.mean(tokens == expected))
        needed = 1.0 if precision == "fp32" else FP16_AGREEMENT
        rows.append({**row, "agreement": agreement, "needed": needed,
                     "status": "passed" if agreement >= needed else "FAILED"})
    return rows


def export_engines(model_file, folder: Path, precision: str) -> Path | str:
    """A bundle of ``model_file`` with TensorRT engines in ``folder``, or why none could be built."""
    from meltok_runtime.errors import MeltokError

    try:
        from meltok import MelTok
        from meltok_export.bundle import export_bundle
        from meltok_runtime.engines.builder import require_builder

        require_builder()
        export_bundle(MelTok.load(model_file), folder, engine="trt", precision=precision, max_batch=4)
    except (MeltokError, ImportError) as error:
        return f"no {precision} engines: {error}"
    return folder


def render(rows: list[dict]) -> str:
    lines = [f"{'bundle':28} {'precision':9} {'backend':8} {'agreement':>9} {'needed':>7}  status"]
    for row in rows:
        agreement = f"{row['agreement']:.4%}" if "agreement" in row else "-"
        needed = f"{row['needed']:.0%}" if "needed" in row else "-"
        lines.append(f"{Path(row['bundle']).name[:28]:28} {row['precision']:9} {row['backend']:8} {agreement:>9} "
                     f"{needed:>7}  {row['status']}")
    return "\n".join(lines)


NOT_RUN = None  # what ``_run`` returns for a step that did not run


def _run(command: list[str], seconds_left: float) -> int | None:
    """The command's exit status, or NOT_RUN when no time was left to start it."""
    if seconds_left < 30:
        print(f"not run (out of time): {' '.join(command)}", flush=True)
        return NOT_RUN
    try:
        return subprocess.run(command, cwd=ROOT, timeout=seconds_left).returncode
    except subprocess.TimeoutExpired:
        print(f"stopped after {seconds_left:.0f} s: {' '.join(command)}", flush=True)
        return 1


def speed(shipped, engine_bundles, seconds_left: float) -> int:
    """``meltok-rt bench`` (``meltok_runtime.deploy.bench``) of the GPU backends; returns the rows not run."""
    from meltok_runtime.deploy.bench import BenchSettings, render as render_bench, run_bench

    plan = [(shipped, ("ort-cuda",))] + [(bundle, ("trt",)) for bundle in engine_bundles]
    settings = BenchSettings(seconds=(1.0, 10.0), batch=16, repeats=5, stream_seconds=10.0,
                             budget_seconds=max(1.0, seconds_left / (2 * len(plan))))
    not_run = 0
    for bundle, backends in plan:
        report = run_bench(bundle, backends, settings)
        print(render_bench(report), flush=True)
        not_run += report["not_run"]
    return not_run


def verdict(failed: bool, not_run: int, allow_partial: bool) -> tuple[str, int]:
    """The last line and the exit status: anything that did not run fails unless ``allow_partial``."""
    if failed:
        return "GPU check: FAILED", 1
    if not_run and not allow_partial:
        return (f"GPU check: FAILED ({not_run} not run; pass --allow-partial to accept a partial run)", 1)
    return ("GPU check: passed" + (f" (partial: {not_run} not run)" if not_run else "")), 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-seconds", type=float, default=480.0, help="the whole check (default: 8 minutes)")
    parser.add_argument("--skip-tests", action="store_true", help="leave out step 1")
    parser.add_argument("--skip-speed", action="store_true", help="leave out step 3")
    parser.add_argument("--allow-partial", action="store_true",
                        help="pass when everything that ran passed, even if rows or steps did not run")
    args = parser.parse_args(argv)
    reason = gpu_present()
    if reason:
        print(f"GPU check not run: no NVIDIA GPU here ({reason})")
        return 1
    deadline = time.monotonic() + args.budget_seconds
    failed, not_run = False, 0
    if not args.skip_tests:
        print("== 1. tests marked gpu or trt", flush=True)
        status = _run([sys.executable, "-m", "pytest", "-q", "-m", "gpu or trt", "tests"],
                      0.4 * (deadline - time.monotonic()))
        not_run += status is NOT_RUN
        failed |= status not in (0, NOT_RUN)
    print("== 2. GPU tokens against ort-cpu (shipped model, real audio)", flush=True)
    from meltok.default_model import DEFAULT_MODEL
    from meltok_runtime.codec import default_bundle

    audio = real_audio()
    rows = compare_backends(default_bundle(), audio, backends=("ort-cuda",))
    with tempfile.TemporaryDirectory(prefix="meltok-gpu-check-") as scratch:
        engine_bundles = []
        for precision in ("fp32", "fp16"):
            bundle = export_engines(DEFAULT_MODEL, Path(scratch) / f"shipped-{precision}", precision)
            if isinstance(bundle, str):
                rows.append({"bundle": f"shipped-{precision}", "precision": precision, "backend": "trt",
                             "status": f"not run: {bundle}"})
                continue
            engine_bundles.append(bundle)
            rows += compare_backends(bundle, audio)
        print(render(rows), flush=True)
        failed |= any(row["status"] == "FAILED" for row in rows)
        not_run += sum(row["status"].startswith("not run") for row in rows)
        if not args.skip_speed:
            print("== 3. latency (meltok-rt bench), shipped model on ort-cuda and its engines on trt", flush=True)
            not_run += speed(default_bundle(), engine_bundles, deadline - time.monotonic())
    line, code = verdict(failed, not_run, args.allow_partial)
    print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
