"""The ``trtexec`` and ``polygraphy convert`` command lines equivalent to an ``EnginePlan``.

Written into every bundle at export (``tensorrt-commands.json``), so an engine can be built with
NVIDIA's own tools where meltok is not installed. Each line carries the plan's decisions: one set of
min/opt/max shapes per optimisation profile (in profile order), TF32 off, strongly typed or weakly
typed fp16 with the float32 layers pinned by exact name, version compatibility. These lines were not
run here (no TensorRT on the machine that wrote them): they follow the tools' option names. With a
stream profile the shape options are repeated once per profile, in profile order; whether a given
trtexec or polygraphy version turns repetitions into several profiles was not checked (see its
``--help``); without one (the default) there is a single set.
"""
from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

from meltok_runtime.errors import MeltokError
from meltok_runtime.io.atomic import atomic_output

from .plan import ENGINE_PRECISIONS, EngineOptions, EnginePlan, plan_engines

COMMANDS_FILE = "tensorrt-commands.json"


def _dims(shape) -> str:
    return "x".join(str(size) for size in shape)


def trtexec_line(plan: EnginePlan, engine_file: str, timing_cache: str = "tensorrt-timing.cache") -> str:
    """``trtexec --onnx=... --saveEngine=...`` with the plan's profiles, precision and layer pins."""
    words = ["trtexec", f"--onnx={plan.onnx_file}", f"--saveEngine={engine_file}"]
    for profile in plan.profiles:  # one set of shape flags per optimisation profile
        for key, flag in (("min", "--minShapes"), ("opt", "--optShapes"), ("max", "--maxShapes")):
            words.append(f"{flag}=" + ",".join(f"{name}:{_dims(shape[key])}" for name, shape in profile.items()))
    words.append("--noTF32")
    if plan.strongly_typed:
        words.append("--stronglyTyped")
    if plan.weak_fp16:
        words += ["--fp16", "--precisionConstraints=obey",
                  "--layerPrecisions=" + ",".join(f"{name}:fp32" for name in plan.float32_layers),
                  "--layerOutputTypes=" + ",".join(f"{name}:fp32" for name in plan.float32_layers)]
    if plan.version_compatible:
        words.append("--versionCompatible")
    words.append(f"--timingCacheFile={timing_cache}")
    return shlex.join(words)


def polygraphy_line(plan: EnginePlan, engine_file: str, timing_cache: str = "tensorrt-timing.cache") -> str:
    """``polygraphy convert ... --convert-to trt`` with the same decisions (TF32 is off unless ``--tf32``)."""
    words = ["polygraphy", "convert", plan.onnx_file, "--convert-to", "trt", "-o", engine_file]
    for profile in plan.profiles:  # each repetition of the three options adds a profile
        for key, flag in (("min", "--trt-min-shapes"), ("opt", "--trt-opt-shapes"), ("max", "--trt-max-shapes")):
            words += [flag, *(f"{name}:[{','.join(str(s) for s in shape[key])}]" for name, shape in profile.items())]
    if plan.strongly_typed:
        words.append("--strongly-typed")
    if plan.weak_fp16:
        words += ["--fp16", "--precision-constraints", "obey", "--layer-precisions",
                  *(f"{name}:float32" for name in plan.float32_layers)]
    if plan.version_compatible:
        words.append("--version-compatible")
    words += ["--timing-cache", timing_cache]
    return shlex.join(words)


TENSORRT_MAJORS = ("10", "11")


def bundle_commands(manifest, options: EngineOptions) -> dict:
    """TensorRT major -> engine precision -> graph -> {"trtexec", "polygraphy", "profiles",
    "float32_layers"}, for every precision that major can build from the bundle's graphs (TensorRT 11: no
    weakly typed fp16 from float32 graphs)."""
    limits = options.limits(manifest)
    record = {}
    for major in TENSORRT_MAJORS:
        for precision in ENGINE_PRECISIONS:
            try:
                plans = plan_engines(manifest, dataclasses.replace(options, precision=precision), f"{major}.0", limits)
            except MeltokError:
                continue  # not buildable with this major from these graphs
            record.setdefault(major, {})[precision] = {
                graph: {"trtexec": trtexec_line(plan, f"{graph}.plan"), "polygraphy": polygraphy_line(plan, f"{graph}.plan"),
                        "profiles": list(plan.profiles), "float32_layers": list(plan.float32_layers)}
                for graph, plan in plans.items()}
    return record


def write_commands(folder, manifest, options: EngineOptions) -> Path:
    """``tensorrt-commands.json`` in ``folder`` (atomically)."""
    text = json.dumps({"note": "equivalent to `meltok-rt engines` with these limits (the export's engines, or "
                               "its defaults); not run where written; with a stream profile the shape options "
                               "repeat once per profile, which not every tool version may accept",
                       "limits": options.limits(manifest), "tensorrt": bundle_commands(manifest, options)},
                      indent=2, sort_keys=True)
    path = Path(folder) / COMMANDS_FILE
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return path
