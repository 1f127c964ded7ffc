"""What a TensorRT engine is built with, decided once from a bundle's manifest (no TensorRT, no torch).

``meltok-export --engine trt`` and ``meltok-rt engines`` build through ``plan_engine``, and the
``trtexec``/``polygraphy`` lines of ``commands.py`` are written from the same ``EnginePlan``:

- Profiles: index 0 fits how the runtime calls an engine: max = one runtime window
  (``DEFAULT_WINDOW_SECONDS``, context included, plus the column the runtime keeps spare) at the
  bundle's max batch, opt = one window at batch 1. TensorRT sizes every execution context for its
  profile's maximum, so a longer max costs GPU memory in every process. Optional index 1
  (``stream_profile``): stream-sized calls (``STREAM_SECONDS``), tuned for what a stream push runs.
- Precision: a float16 graph (``precision="fp16"`` export, explicit casts) builds strongly typed, the
  only kind TensorRT 11 builds. A float32 graph builds a float32 engine; asked for fp16 on TensorRT 10
  it is built weakly typed (``FP16`` + ``OBEY_PRECISION_CONSTRAINTS``) with the float32 islands (node
  names stored in the manifest at export) pinned to float32 by exact layer name; TensorRT 11 refuses.
- TF32 is off in every build (the islands' products would read 10-bit mantissas).
"""
from __future__ import annotations

from dataclasses import dataclass

from meltok_runtime.manifest import GRAPH_NAMES
from meltok_runtime.errors import BackendError, BundleError, SettingsError
from meltok_runtime.lengths import decoded_length, padded_length, token_columns
from meltok_runtime.windowing import DEFAULT_WINDOW_SECONDS, seconds_to_columns

STREAM_SECONDS = (1.0, 2.0)  # (opt, max) of the stream profile: a push with its context and lookahead
ENGINE_PRECISIONS = ("fp32", "fp16")


def default_profile_seconds(sample_rate: int, hop: int, compression: int) -> tuple[float, float]:
    """``(max_seconds, opt_seconds)``: one runtime window plus the spare column, and one window."""
    window = max(1, seconds_to_columns(DEFAULT_WINDOW_SECONDS, sample_rate, hop, compression))
    return (decoded_length(window + 1, hop, compression) / sample_rate,
            decoded_length(window, hop, compression) / sample_rate)


def engine_limits(sample_rate: int, hop: int, compression: int, *, max_batch: int, max_seconds: float,
                  opt_seconds: float) -> dict:
    """Lengths engines are profiled for (a manifest's ``limits``); SettingsError for impossible ones."""
    if not max_seconds > 0 or not 0 < opt_seconds <= max_seconds:
        raise SettingsError(f"need 0 < opt seconds <= max seconds, got {opt_seconds} and {max_seconds}")
    if int(max_batch) != max_batch or max_batch < 1:
        raise SettingsError(f"max batch must be a positive integer, got {max_batch}")
    max_samples = padded_length(int(max_seconds * sample_rate), hop, compression)
    return {"max_batch": int(max_batch), "max_seconds": float(max_seconds), "opt_seconds": float(opt_seconds),
            "min_samples": padded_length(1, hop, compression), "max_samples": max_samples,
            "opt_samples": padded_length(int(opt_seconds * sample_rate), hop, compression),
            "max_columns": token_columns(max_samples, hop, compression)}


def _shapes(samples: dict, batch: dict, token_rows: int, hop: int, compression: int) -> dict:
    return {"encoder": {"audio": {k: [batch[k], samples[k]] for k in samples}},
            "decoder": {"tokens": {k: [batch[k], token_rows, token_columns(samples[k], hop, compression)]
                                   for k in samples}}}


def profile_shapes(limits: dict, token_rows: int, hop: int, compression: int,
                   opt_batch: int = 1) -> dict[str, dict[str, dict[str, list[int]]]]:
    """The window profile from ``limits``: graph -> input -> {"min", "opt", "max"} shapes."""
    if not 1 <= opt_batch <= limits["max_batch"]:
        raise SettingsError(f"need 1 <= opt batch <= max batch, got {opt_batch} and {limits['max_batch']}")
    samples = {"min": limits["min_samples"], "opt": limits["opt_samples"], "max": limits["max_samples"]}
    return _shapes(samples, {"min": 1, "opt": opt_batch, "max": limits["max_batch"]}, token_rows, hop, compression)


def stream_profile_shapes(limits: dict, sample_rate: int, token_rows: int, hop: int, compression: int) -> dict:
    """The stream profile: one column up to ``STREAM_SECONDS[1]`` (never past the window profile)."""
    opt, high = (min(padded_length(int(s * sample_rate), hop, compression), limits["max_samples"])
                 for s in STREAM_SECONDS)
    samples = {"min": limits["min_samples"], "opt": opt, "max": high}
    return _shapes(samples, {"min": 1, "opt": 1, "max": limits["max_batch"]}, token_rows, hop, compression)


@dataclass(frozen=True)
class EnginePlan:
    """Every decision of one engine build. ``profiles``: index 0 the window profile, index 1 (optional) the
    stream profile, each input name -> {"min", "opt", "max"}. ``float32_layers``: layer names pinned to
    float32 (weakly typed fp16 builds only; empty otherwise)."""

    graph: str
    onnx_file: str
    precision: str  # the engine's: "fp32" or "fp16"
    strongly_typed: bool  # precision from the graph's own casts (every TensorRT 11 network)
    weak_fp16: bool  # TensorRT 10 only: FP16 + OBEY_PRECISION_CONSTRAINTS, islands pinned
    version_compatible: bool
    profiles: tuple
    float32_layers: tuple = ()


def plan_engine(manifest, graph: str, *, precision: str, tensorrt_version: str, profiles: tuple,
                version_compatible: bool = False) -> EnginePlan:
    """The plan for ``graph``'s engine under ``tensorrt_version``; typed errors for what cannot be built."""
    entry = manifest.graphs[graph]
    major = int(tensorrt_version.split(".")[0])
    has_half = entry.precision == "fp16"
    if entry.precision not in ENGINE_PRECISIONS:
        raise SettingsError(f"the bundle's {graph} graph is {entry.precision}, which TensorRT does not build "
                            "(int8 graphs are for ONNX Runtime on the CPU): export with --precision fp32 or fp16")
    if precision not in ENGINE_PRECISIONS or (precision == "fp32" and has_half):
        raise SettingsError(f"precision {precision!r} does not fit {entry.file} ({entry.precision} graph): "
                            f"use --precision {'fp16' if has_half else 'fp32 or fp16'}")
    if precision == "fp16" and not has_half and major >= 11:
        raise BackendError(f"TensorRT {tensorrt_version} builds only strongly typed networks and {entry.file} is a "
                           "float32 graph; export with --precision fp16 to get float16 graphs with explicit casts")
    weak_fp16 = precision == "fp16" and not has_half
    layers = ()
    if weak_fp16:
        names = manifest.float32_nodes.get(graph)
        if not names:
            raise BundleError(f"the bundle's manifest does not name the float32 layers of its {graph} graph (it "
                              "predates them), so a weakly typed fp16 engine cannot keep them float32: build with "
                              "--precision fp32, or re-export the bundle with this meltok version")
        layers = tuple(sorted(names))
    return EnginePlan(graph=graph, onnx_file=entry.file, precision=precision, strongly_typed=has_half or major >= 11,
                      weak_fp16=weak_fp16, version_compatible=version_compatible, profiles=tuple(profiles),
                      float32_layers=layers)


def bundle_profiles(manifest, limits: dict, *, stream_profile: bool = False) -> dict[str, tuple]:
    """Graph -> its profiles (window, then stream when asked) for a bundle described by ``manifest``."""
    numbers = (manifest.token_rows, manifest.hop_length, manifest.compression)
    window = profile_shapes(limits, *numbers)
    stream = stream_profile_shapes(limits, manifest.sample_rate, *numbers) if stream_profile else None
    return {graph: (window[graph],) + ((stream[graph],) if stream else ()) for graph in window}


@dataclass(frozen=True)
class EngineOptions:
    """What ``meltok-rt engines`` and ``meltok-export --engine trt`` take: ``max_seconds``/``opt_seconds``
    None for one runtime window (``default_profile_seconds``); ``precision`` None (``add_engines`` only) for
    the bundle graphs' own."""

    precision: str | None = "fp32"
    max_seconds: float | None = None
    opt_seconds: float | None = None
    max_batch: int = 16
    stream_profile: bool = False
    version_compatible: bool = False
    timing_cache: str | None = None

    def limits(self, manifest) -> dict:
        numbers = (manifest.sample_rate, manifest.hop_length, manifest.compression)
        default_max, default_opt = default_profile_seconds(*numbers)
        max_seconds = default_max if self.max_seconds is None else self.max_seconds
        opt_seconds = min(default_opt, max_seconds) if self.opt_seconds is None else self.opt_seconds
        return engine_limits(*numbers, max_batch=self.max_batch, max_seconds=max_seconds, opt_seconds=opt_seconds)


def plan_engines(manifest, options: EngineOptions, tensorrt_version: str, limits: dict) -> dict:
    """Graph -> EnginePlan for ``manifest``'s bundle under ``tensorrt_version``."""
    profiles = bundle_profiles(manifest, limits, stream_profile=options.stream_profile)
    return {graph: plan_engine(manifest, graph, precision=options.precision, tensorrt_version=tensorrt_version,
                               profiles=profiles[graph], version_compatible=options.version_compatible)
            for graph in GRAPH_NAMES}
