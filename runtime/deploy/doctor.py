"""``meltok-rt doctor``: whether a bundle runs on this machine with a backend, and how to fix what stops it.

``diagnose`` joins the machine's description (``machine.py``), the bundle's graphs and engines (each
engine checked against this GPU and TensorRT with the trt backend's own ``check_engine``), every
backend's availability (the checks ``auto`` makes) and ``auto``'s choice with its reason. Each problem
comes with its fix: an install line or a rebuild command. ``REPORT_SCHEMA`` (JSON Schema) describes
the ``--json`` report.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from meltok_runtime.backends import AUTO_ORDER, availability
from meltok_runtime.backends.ort import CPU_INSTALL, GPU_INSTALL
from meltok_runtime.backends.trt import TRT_BUILD_INSTALL, TRT_RUNTIME_INSTALL, check_engine
from meltok_runtime.errors import MeltokError
from meltok_runtime.manifest import load_manifest

from .machine import describe_machine

JETSON_ORT = ("install the onnxruntime-gpu wheel built for your JetPack from NVIDIA's Jetson channels (the "
              "jetson-ai-lab pip index, or developer.nvidia.com's Jetson Zoo) into this environment; it is not on PyPI")
JETSON_TRT = ("TensorRT comes with JetPack: `sudo apt install nvidia-jetpack` (or python3-libnvinfer), and use a "
              "Python environment that sees the system packages (python -m venv --system-site-packages)")

_TEXT = {"type": "string"}
_MAYBE_TEXT = {"type": ["string", "null"]}
REPORT_SCHEMA = {
    "type": "object",
    "required": ["machine", "gpu", "bundle", "backends", "backend", "auto", "runs", "problems"],
    "properties": {
        "machine": {"type": "object", "required": ["python", "platform", "numpy", "onnxruntime", "nvidia_driver",
                                                   "cuda_runtime", "tensorrt", "jetson"],
                    "properties": {
                        "onnxruntime": {"type": "object", "required": ["version", "providers"],
                                        "properties": {"version": _MAYBE_TEXT,
                                                       "providers": {"type": "array", "items": _TEXT}}},
                        "nvidia_driver": {"type": "object", "required": ["driver", "devices", "error"],
                                          "properties": {"devices": {"type": "array", "items": {
                                              "type": "object", "required": ["name", "compute_capability"]}}}},
                        "tensorrt": {"type": "object", "required": ["kind", "version"],
                                     "properties": {"kind": {"enum": ["full", "lean", "none"]},
                                                    "version": _MAYBE_TEXT}},
                        "jetson": {"type": ["object", "null"]}}},
        "gpu": _TEXT,
        "bundle": {"type": "object", "required": ["path", "error", "graphs", "engines"],
                   "properties": {"path": _MAYBE_TEXT, "error": _MAYBE_TEXT, "graphs": {"type": "object"},
                                  "engines": {"type": "array", "items": {
                                      "type": "object", "required": ["graph", "file", "tensorrt_version",
                                                                     "compute_capability", "compatible", "reason"],
                                      "properties": {"compatible": {"type": "boolean"}, "reason": _MAYBE_TEXT}}}}},
        "backends": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["runs", "reason"],
            "properties": {"runs": {"type": "boolean"}, "reason": _MAYBE_TEXT}}},
        "backend": _TEXT,
        "auto": {"type": "object", "required": ["backend", "reason"],
                 "properties": {"backend": _MAYBE_TEXT, "reason": _TEXT}},
        "runs": {"type": "boolean"},
        "problems": {"type": "array", "items": {"type": "object", "required": ["problem", "fix"],
                                                "properties": {"problem": _TEXT, "fix": _TEXT}}},
    },
}


def _engines_here(manifest, machine: dict) -> list[dict]:
    """Every engine of the bundle, with whether it may run on this GPU and TensorRT (and why not)."""
    trt, devices = machine["tensorrt"], machine["nvidia_driver"]["devices"]
    rows = []
    for entry in manifest.engines:
        row = {"graph": entry.graph, "file": entry.file, "precision": entry.precision,
               "tensorrt_version": entry.tensorrt_version, "compute_capability": entry.compute_capability,
               "device": entry.device_name, "version_compatible": entry.version_compatible}
        if trt["kind"] == "none" or not devices:
            reason = "no TensorRT here" if trt["kind"] == "none" else "no NVIDIA GPU here"
        else:
            try:
                check_engine(dataclasses.replace(manifest, engines=(entry,)), entry.graph,
                             tensorrt_version=trt["version"], compute_capability=devices[0]["compute_capability"],
                             lean=trt["kind"] == "lean")
                reason = None
            except MeltokError as error:
                reason = str(error)
        rows.append({**row, "compatible": reason is None, "reason": reason})
    return rows


def _problems(machine: dict, bundle: dict, backends: dict, backend: str) -> list[dict]:
    """What stops a backend here, each with its fix."""
    problems = []
    ort, trt = machine["onnxruntime"], machine["tensorrt"]
    gpus, on_jetson = machine["nvidia_driver"]["devices"], machine["jetson"] is not None
    path = bundle["path"] or "BUNDLE"
    if bundle["error"]:
        problems.append({"problem": bundle["error"], "fix": "pass a bundle folder written by meltok-export (-b BUNDLE)"})
    if ort["version"] is None:
        problems.append({"problem": "ONNX Runtime is not installed", "fix": JETSON_ORT if on_jetson else CPU_INSTALL})
    if gpus and ort["version"] is not None and "CUDAExecutionProvider" not in ort["providers"]:
        problems.append({"problem": f"this machine has a GPU ({gpus[0]['name']}) but ONNX Runtime {ort['version']} has "
                                    f"no CUDA execution provider (it has {', '.join(ort['providers'])})",
                         "fix": JETSON_ORT if on_jetson else GPU_INSTALL})
    if gpus and trt["kind"] == "none":
        problems.append({"problem": "TensorRT is not installed: the trt backend cannot run",
                         "fix": JETSON_TRT if on_jetson else f"{TRT_RUNTIME_INSTALL}; to build engines here: "
                                                             f"{TRT_BUILD_INSTALL}"})
    if gpus and trt["kind"] != "none" and bundle["graphs"] and not any(e["compatible"] for e in bundle["engines"]):
        what = ("the bundle's engines were built for another GPU or TensorRT" if bundle["engines"]
                else "the bundle has no TensorRT engines")
        fix = (f"meltok-rt engines {path}" + (" --force" if bundle["engines"] else "") if trt["kind"] == "full"
               else f"build them where TensorRT's builder is installed ({JETSON_TRT if on_jetson else TRT_BUILD_INSTALL}) "
                    f"with `meltok-rt engines {path} --version-compatible`, then run them on the lean runtime")
        problems.append({"problem": what, "fix": fix})
    asked = [backend] if backend != "auto" else []
    for name in asked:
        reason = backends.get(name, {}).get("reason")
        if reason and not any(reason in p["problem"] for p in problems):
            problems.append({"problem": f"{name} cannot run this bundle here: {reason}",
                             "fix": "see the line above for its install or rebuild command, or use --backend auto"})
    return problems


def diagnose(bundle=None, backend: str = "auto", *, machine: dict | None = None) -> dict:
    """The doctor's report (``REPORT_SCHEMA``); ``runs``: the bundle runs here with ``backend``."""
    from meltok_runtime.codec import default_bundle

    machine = machine if machine is not None else describe_machine()
    report_bundle = {"path": None, "error": None, "graphs": {}, "engines": []}
    backends = {name: {"runs": False, "reason": "no bundle to check"} for name in AUTO_ORDER}
    try:
        path = Path(bundle) if bundle is not None else default_bundle()
        report_bundle["path"] = str(path)
        manifest = load_manifest(path)
        report_bundle.update(model_id=manifest.model_id,
                             graphs={name: {"file": g.file, "precision": g.precision}
                                     for name, g in manifest.graphs.items()},
                             engines=_engines_here(manifest, machine))
        backends = {name: {"runs": why is None, "reason": why} for name, why in availability(path, manifest).items()}
    except MeltokError as error:
        report_bundle["error"] = str(error)
    chosen = next((name for name in AUTO_ORDER if backends[name]["runs"]), None)
    skipped = "; ".join(f"{name}: {backends[name]['reason']}" for name in AUTO_ORDER[:AUTO_ORDER.index(chosen)]) \
        if chosen else ""
    auto = {"backend": chosen,
            "reason": (f"{chosen} is the first choice (trt, ort-cuda, ort-cpu) and runs here" if chosen and not skipped
                       else f"{chosen}, because earlier choices cannot run here ({skipped})" if chosen
                       else "no backend can run this bundle here")}
    driver = machine["nvidia_driver"]
    gpu = (", ".join(f"{d['name']} (compute capability {d['compute_capability']})" for d in driver["devices"])
           if driver["devices"] else f"no NVIDIA GPU here ({driver['error']})")
    runs = chosen is not None if backend == "auto" else backends.get(backend, {}).get("runs", False)
    return {"machine": machine, "gpu": gpu, "bundle": report_bundle, "backends": backends, "backend": backend,
            "auto": auto, "runs": bool(runs), "problems": _problems(machine, report_bundle, backends, backend)}


def render(report: dict) -> str:
    """The report as lines of text."""
    machine = report["machine"]
    ort, trt, jetson = machine["onnxruntime"], machine["tensorrt"], machine["jetson"]
    cuda_runtime = machine["cuda_runtime"]["version"]
    lines = [f"python {machine['python']} ({machine['platform']}), numpy {machine['numpy']}",
             f"onnxruntime: {ort['version'] or 'not installed'}" + (f" ({', '.join(ort['providers'])})"
                                                                     if ort["providers"] else ""),
             f"GPU: {report['gpu']}",
             f"CUDA: driver {machine['nvidia_driver']['driver'] or '-'}, runtime (cuda-python) {cuda_runtime or '-'}",
             f"TensorRT: {trt['kind']}" + (f" {trt['version']}" if trt["version"] else "")]
    if jetson:
        lines.append(f"Jetson: {jetson['model'] or 'unknown board'}; {jetson['l4t']}; power mode "
                     f"{jetson['power_mode'] or 'unknown (nvpmodel not found)'}")
    bundle = report["bundle"]
    lines.append(f"bundle: {bundle['path'] or '-'}" + (f" ({bundle['error']})" if bundle["error"] else ""))
    for name, graph in bundle["graphs"].items():
        lines.append(f"  {name}: {graph['file']} ({graph['precision']})")
    for engine in bundle["engines"]:
        lines.append(f"  engine {engine['file']}: TensorRT {engine['tensorrt_version']}, compute capability "
                     f"{engine['compute_capability']}: " + ("runs here" if engine["compatible"]
                                                            else f"not here ({engine['reason']})"))
    for name, state in report["backends"].items():
        lines.append(f"{name}: " + ("runs here" if state["runs"] else f"cannot run ({state['reason']})"))
    lines.append(f"auto picks {report['auto']['reason']}")
    for problem in report["problems"]:
        lines += [f"problem: {problem['problem']}", f"  fix: {problem['fix']}"]
    lines.append(f"the bundle {'runs' if report['runs'] else 'does NOT run'} here with --backend {report['backend']}")
    return "\n".join(lines)
