"""TensorRT engines for a bundle, built on the machine that runs them (``meltok-rt engines``), without PyTorch.

``build_engines`` plans both graphs' engines (``plan.py``), builds them (``builder.py``) and returns
their entries; ``meltok-export --engine trt`` calls it inside its export. ``add_engines`` does the same
into an existing bundle: the new engine files get names of their own (``encoder-<hash>.plan``), are
checked against ONNX Runtime CPU on the bundle's verification clip (``reference.py``), and only then
does the manifest, rewritten atomically, point at them; the engines it replaced are deleted last.
An interrupted or failed run leaves the bundle as it was.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

from meltok_runtime.errors import BundleError, EngineVerificationError
from meltok_runtime.io.atomic import atomic_output
from meltok_runtime.manifest import MANIFEST_NAME, GRAPH_NAMES, load_manifest

from .builder import build_engine, require_builder
from .plan import EngineOptions, plan_engines
from .reference import compare_engines

log = logging.getLogger("meltok_runtime")


def build_engines(folder, manifest, options: EngineOptions, *, limits: dict | None = None,
                  names: dict | None = None, out=None) -> tuple:
    """Build both graphs' engines from the ONNX files in ``folder`` into ``out`` (default ``folder``;
    ``names``: graph -> engine file name, default ``<graph>.plan``); their EngineEntries."""
    folder = Path(folder)
    out = Path(out) if out is not None else folder
    version, _, _ = require_builder()
    plans = plan_engines(manifest, options, version, limits or options.limits(manifest))
    names = names or {graph: f"{graph}.plan" for graph in GRAPH_NAMES}
    return tuple(build_engine(plan, folder / plan.onnx_file, out / names[graph], manifest.graphs[graph].sha256,
                              timing_cache=options.timing_cache) for graph, plan in plans.items())


def add_engines(bundle, options: EngineOptions, *, force: bool = False):
    """Build, verify and add engines for this machine to ``bundle``; the new manifest."""
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    if manifest.engines and not force:
        built = ", ".join(sorted({f"{e.device_name} (TensorRT {e.tensorrt_version})" for e in manifest.engines}))
        raise BundleError(f"the bundle already has TensorRT engines (built on {built}); pass --force to replace them")
    if not manifest.verification:
        raise BundleError("the bundle holds no verification clip (it was exported before meltok stored one), so "
                          "engines built here cannot be checked: re-export it with `meltok-export`")
    version, capability, _ = require_builder()
    if options.precision is None:  # the graphs' own precision
        options = dataclasses.replace(options, precision=manifest.graphs["encoder"].precision)
    limits = options.limits(manifest)
    plan_engines(manifest, options, version, limits)  # refuses impossible combinations before any build
    staging = bundle / f".engines-{capability}-{version}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        entries = build_engines(bundle, manifest, options, limits=limits, out=staging)
        named = tuple(dataclasses.replace(entry, file=f"{entry.graph}-{entry.sha256[:12]}.plan") for entry in entries)
        candidate = dataclasses.replace(manifest, engines=named, limits=limits,
                                        versions={**manifest.versions, "tensorrt": version})
        try:
            for entry, built in zip(named, entries):
                (staging / built.file).replace(bundle / entry.file)
            report = compare_engines(bundle, candidate)
            if not report["passed"]:
                raise EngineVerificationError("the engines built here fail their check against ONNX Runtime CPU: "
                                              f"{'; '.join(report['failures'])}; the bundle was left as it was")
            candidate = dataclasses.replace(candidate, tolerances={**manifest.tolerances, "tensorrt_here": report})
            with atomic_output(bundle / MANIFEST_NAME) as tmp:
                tmp.write_text(candidate.to_json())
        except BaseException:
            for entry in named:
                if entry.file not in {old.file for old in manifest.engines}:
                    (bundle / entry.file).unlink(missing_ok=True)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    kept = {entry.file for entry in candidate.engines}
    for old in manifest.engines:
        if old.file not in kept:
            (bundle / old.file).unlink(missing_ok=True)
    log.info("added %s TensorRT engines to %s", options.precision, bundle)
    return candidate
