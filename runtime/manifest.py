"""Export bundle manifest (``manifest.json``): the contract between ``meltok_export`` and the runtime.

A bundle is a folder holding ``encoder.onnx`` (audio ``[B, N]`` float32 -> tokens ``[B, rows, T']``
int32), ``decoder.onnx`` (tokens int32 -> audio ``[B, (c * T' - 1) * hop]`` float32, or, where
``decoder_output`` is ``"log_mel"``, the log-mel ``[B, n_mels, c * T']`` that the runtime turns into
audio with ``mel_inversion.MelInverter``: ``mel_decode``), optional TensorRT ``*.plan`` engines, and
this manifest. Every file is listed with its SHA-256, checked
before use.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from meltok_runtime.errors import BundleError
from meltok_runtime.mel_decode import DECODER_OUTPUTS, check_inverter_parameters
from meltok_runtime.windowing import DEFAULT_CONTEXT_SECONDS, DEFAULT_WINDOW_SECONDS

BUNDLE_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
GRAPH_NAMES = ("encoder", "decoder")


def file_sha256(path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output; ``shape`` uses names for dynamic axes (e.g. ``["batch", "samples"]``)."""

    name: str
    dtype: str  # numpy dtype name: "float32", "float16", "int32", "int64"
    shape: tuple

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(self.shape))


@dataclass(frozen=True)
class GraphEntry:
    """An ONNX graph in the bundle."""

    file: str
    sha256: str
    precision: str  # "fp32", "fp16" (fp16 trunk, float32 islands) or "int8" (QDQ trunk for ONNX Runtime CPU)
    inputs: tuple
    outputs: tuple

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(TensorSpec(**t) if isinstance(t, dict) else t for t in self.inputs))
        object.__setattr__(self, "outputs", tuple(TensorSpec(**t) if isinstance(t, dict) else t for t in self.outputs))


@dataclass(frozen=True)
class EngineEntry:
    """A TensorRT engine built from ``graph``'s ONNX file, valid only where all keys match."""

    graph: str
    file: str
    sha256: str
    onnx_sha256: str
    tensorrt_version: str
    compute_capability: str  # e.g. "9.0"
    device_name: str
    precision: str
    profile: dict  # input name -> {"min": [...], "opt": [...], "max": [...]}
    version_compatible: bool = False  # built with TensorRT's VERSION_COMPATIBLE flag: runs on the lean runtime
    stream_profile: dict = field(default_factory=dict)  # optimisation profile 1 (stream-sized calls); {} if none


@dataclass(frozen=True)
class Manifest:
    """Everything a runtime needs to know about a bundle without opening its graphs."""

    model_id: str
    model_name: str
    model_sha256: str
    sample_rate: int
    hop_length: int
    n_mels: int
    token_rows: int
    codebook_size: int
    compression: int
    opset: int
    graphs: dict  # "encoder"/"decoder" -> GraphEntry
    engines: tuple = ()
    limits: dict = field(default_factory=dict)  # e.g. max_batch, max_seconds, opt_seconds
    tolerances: dict = field(default_factory=dict)  # measured at export: token agreement, waveform error, SNR
    versions: dict = field(default_factory=dict)  # tool versions at export
    format_version: int = BUNDLE_FORMAT_VERSION
    # time-local models: {"time_local": true, "encoder_dependency": [lo, hi], "decoder_influence": [lo, hi]}
    # in samples around each token column (meltok.receptive_field); empty for the reference architecture
    streaming: dict = field(default_factory=dict)
    # how the runtime windows long inputs (``windowing``): {"window_seconds", "context_seconds", "fade_seconds"};
    # absent in bundles written before it, which get the runtime's defaults (``window_settings``)
    windowing: dict = field(default_factory=dict)
    # graph -> names of the nodes of its float32 islands (what a weakly typed fp16 TensorRT build pins)
    float32_nodes: dict = field(default_factory=dict)
    # the verification clip and ONNX Runtime CPU's reference outputs on it (``meltok_runtime.engines.reference``):
    # {"file": "verification.npz", "sha256": ..., "source": ..., "samples": N, "decoded_rms": ...}; {} if none
    verification: dict = field(default_factory=dict)
    # what the decoder graph gives: "audio", or "log_mel" finished by the runtime's MelInverter (``mel_decode``)
    decoder_output: str = "audio"
    # "log_mel" decoders: the MelInverter's parameters (``mel_decode.INVERTER_PARAMETERS``); {} otherwise
    mel_inversion: dict = field(default_factory=dict)
    # ids of other models whose token files this bundle decodes: the same front end, encoder, quant_conv and
    # codebook, so the same tokens (checked at export: ``meltok-export --tokens-of``); e.g. an earlier default
    accepts_tokens_of: list = field(default_factory=list)

    def __post_init__(self):
        graphs = {name: GraphEntry(**g) if isinstance(g, dict) else g for name, g in self.graphs.items()}
        object.__setattr__(self, "graphs", graphs)
        object.__setattr__(self, "engines", tuple(EngineEntry(**e) if isinstance(e, dict) else e
                                                  for e in self.engines))

    def window_settings(self) -> dict:
        """``{"window_seconds", "context_seconds", "fade_seconds"}`` from ``windowing``, defaults filled in
        (12 s windows, 1 s of context, a cross-fade as long as the context: ``fade_seconds`` None)."""
        settings = {"window_seconds": DEFAULT_WINDOW_SECONDS, "context_seconds": DEFAULT_CONTEXT_SECONDS,
                    "fade_seconds": None}
        unknown = sorted(set(self.windowing) - set(settings))
        if unknown:
            raise BundleError(f"the manifest's windowing has unknown keys {unknown}; expected some of "
                              f"{sorted(settings)}: upgrade meltok or re-export the bundle")
        for key, value in self.windowing.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not number or not (value > 0 if key == "window_seconds" else value >= 0):
                raise BundleError(f"the manifest's windowing has {key} = {value!r}; expected a finite number of "
                                  "seconds (window > 0, context and fade >= 0): re-export the bundle")
            settings[key] = float(value)
        return settings

    @property
    def token_rate(self) -> float:
        return self.token_rows * self.sample_rate / self.hop_length / self.compression

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "manifest") -> "Manifest":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise BundleError(f"{source} is not valid JSON ({error}); re-export the bundle")
        if not isinstance(data, dict):
            raise BundleError(f"{source} does not hold a JSON object; re-export the bundle")
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise BundleError(f"{source} has bundle format version {version!r}; expected a whole number from 1 to "
                              f"{BUNDLE_FORMAT_VERSION}: the manifest is corrupt, re-export the bundle")
        if version > BUNDLE_FORMAT_VERSION:
            raise BundleError(f"{source} has bundle format version {version!r}; this runtime reads up to "
                              f"{BUNDLE_FORMAT_VERSION}: upgrade meltok or re-export the bundle")
        try:
            manifest = cls(**data)
        except (TypeError, ValueError, AttributeError) as error:
            raise BundleError(f"{source} is missing or has wrong fields ({error}); re-export the bundle")
        missing = [name for name in GRAPH_NAMES if name not in manifest.graphs]
        if missing:
            raise BundleError(f"{source} lists no {' or '.join(missing)} graph; re-export the bundle")
        manifest.window_settings()  # refuses a bad ``windowing`` now, not at the first long input
        if not (isinstance(manifest.accepts_tokens_of, list)
                and all(isinstance(item, str) and item for item in manifest.accepts_tokens_of)):
            raise BundleError(f"{source} has accepts_tokens_of {manifest.accepts_tokens_of!r}; expected a list of "
                              "model ids: re-export the bundle")
        manifest.check_decoder_output(source)
        return manifest

    def check_decoder_output(self, source: str = "manifest") -> None:
        """BundleError unless ``decoder_output`` is known and ``mel_inversion`` fits it."""
        if self.decoder_output not in DECODER_OUTPUTS:
            raise BundleError(f"{source} has decoder_output {self.decoder_output!r}; this runtime knows "
                              f"{list(DECODER_OUTPUTS)}: upgrade meltok or re-export the bundle")
        if self.decoder_output == "audio" and self.mel_inversion:
            raise BundleError(f"{source} has mel_inversion parameters but an audio decoder; re-export the bundle")
        if self.decoder_output == "log_mel":
            check_inverter_parameters(self.mel_inversion, source)

    def write(self, folder) -> Path:
        """Write ``manifest.json`` into ``folder`` (the bundle folder is itself written atomically)."""
        path = Path(folder) / MANIFEST_NAME
        path.write_text(self.to_json())
        return path


def load_manifest(bundle, *, verify_files: bool = True) -> Manifest:
    """Read and check a bundle's manifest and that its graphs exist; with ``verify_files`` every listed
    graph is hashed too (``Codec.open`` leaves that to the backend, which hashes the bytes it loads)."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"bundle {str(bundle)!r} is not a folder; pass the folder that meltok-export wrote")
    path = bundle / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"bundle {str(bundle)!r} has no {MANIFEST_NAME}; it is incomplete: re-export it")
    manifest = Manifest.from_json(path.read_bytes().decode("utf-8", errors="replace"), source=str(path))
    for name, graph in manifest.graphs.items():
        verify_file(bundle / graph.file, graph.sha256 if verify_files else None, what=f"{name} graph")
    return manifest


def verify_file(path: Path, sha256: str | None, *, what: str) -> None:
    """Raise BundleError when ``path`` is missing or (unless ``sha256`` is None) its hash differs from the
    manifest's."""
    if not path.is_file():
        raise BundleError(f"the {what} {str(path)!r} is missing; the bundle is incomplete: re-export it")
    if sha256 is not None and file_sha256(path) != sha256:
        raise BundleError(f"the {what} {str(path)!r} does not match the hash in its manifest; the file is corrupt "
                          "or was modified: re-export the bundle")
