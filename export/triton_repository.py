"""A Triton Inference Server model repository from an export bundle (no torch; the bundle is enough).

``write_triton_repository(bundle, repo)`` writes three models::

    repo/
      meltok_encoder/  config.pbtxt, 1/model.onnx   audio [B, N] float32 -> tokens [B, rows, T']
      meltok_decoder/  config.pbtxt, 1/model.onnx   tokens -> audio [B, (c T' - 1) hop] float32
      meltok/          config.pbtxt, 1/model.py, 1/manifest.json
                       the Python-backend pipeline: audio [N] + sample rate -> tokens [rows, T'] + num_samples,
                       or tokens (+ num_samples, sample rate) -> audio [N], calling the two graph models (BLS)

The graph models are ``onnxruntime`` models (optionally with TensorRT as ONNX Runtime's execution
accelerator) or, with ``engines``, ``tensorrt_plan`` models from the bundle's engines; their input
and output names, data types and dims come from the manifest's graph specifications, with
dynamic batching across concurrent requests. ``meltok/1/model.py`` is ``triton_model.py`` of this
package, which runs ``meltok_runtime``'s own pipeline (``GraphCodec``) on BLS graph calls.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from meltok_runtime.io.atomic import atomic_directory, check_new_folder
from meltok_runtime.manifest import MANIFEST_NAME, GraphEntry, Manifest, load_manifest, verify_file
from meltok_runtime.optional import import_optional

from .errors import ExportDestinationError, TritonOptionError

ENCODER_MODEL, DECODER_MODEL, PIPELINE_MODEL = "meltok_encoder", "meltok_decoder", "meltok"
GRAPH_MODELS = {"encoder": ENCODER_MODEL, "decoder": DECODER_MODEL}
VERSION = "1"
PIPELINE_SOURCE = Path(__file__).resolve().parent / "triton_model.py"

# The pipeline model's inputs (all optional: a request holds either audio or tokens) and outputs.
AUDIO, SAMPLE_RATE, TOKENS, NUM_SAMPLES = "audio", "sample_rate", "tokens", "num_samples"
ENCODED_TOKENS, ENCODED_NUM_SAMPLES = "encoded_tokens", "encoded_num_samples"
DECODED_AUDIO, DECODED_SAMPLE_RATE = "decoded_audio", "decoded_sample_rate"

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int32": "TYPE_INT32", "int64": "TYPE_INT64"}
WIRE_TYPES = {"TYPE_FP32": "FP32", "TYPE_INT32": "INT32", "TYPE_INT64": "INT64"}  # client datatypes
DEFAULT_MAX_BATCH = 8  # for bundles whose manifest states no max_batch
TRT_WORKSPACE_BYTES = 1 << 30


class _Enum(str):
    """A protobuf enum value: written without quotes."""


@dataclass(frozen=True)
class TritonOptions:
    """How the graph models are served.

    ``engines``: ``tensorrt_plan`` models from the bundle's engines instead of ``onnxruntime`` models;
    ``max_batch_size`` (default: the bundle's ``max_batch``, capped by its engines); dynamic batching
    with ``preferred_batch_sizes`` (default: powers of two from 2 up to ``max_batch_size``) and
    ``max_queue_delay_us``; ``instances`` of each graph model on the GPU, or on the CPU with ``cpu``;
    ``trt_accelerator``: TensorRT as ONNX Runtime's GPU execution accelerator (``trt_fp16``: its FP16
    mode, for the whole graph); ``pipeline_instances``: Python pipeline instances (CPU), the
    requests in flight at once.
    """

    engines: bool = False
    max_batch_size: int | None = None
    preferred_batch_sizes: tuple | None = None
    max_queue_delay_us: int = 2000
    instances: int = 1
    cpu: bool = False
    trt_accelerator: bool = False
    trt_fp16: bool = False
    pipeline_instances: int = 4

    def __post_init__(self):
        for name in ("max_batch_size", "instances", "pipeline_instances"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise TritonOptionError(f"{name} is {value!r}; expected a whole number of at least 1")
        if not isinstance(self.max_queue_delay_us, int) or self.max_queue_delay_us < 0:
            raise TritonOptionError(f"max_queue_delay_us is {self.max_queue_delay_us!r}; expected a whole number of "
                                    "microseconds, 0 or more")
        if self.preferred_batch_sizes is not None:
            object.__setattr__(self, "preferred_batch_sizes", tuple(self.preferred_batch_sizes))
            if any(not isinstance(size, int) or size < 1 for size in self.preferred_batch_sizes):
                raise TritonOptionError(f"preferred batch sizes {list(self.preferred_batch_sizes)} must be whole "
                                        "numbers of at least 1")
        if self.trt_fp16 and not self.trt_accelerator:
            raise TritonOptionError("--trt-fp16 sets the TensorRT accelerator's precision: add --trt-accelerator")
        if self.trt_accelerator and (self.engines or self.cpu):
            raise TritonOptionError("--trt-accelerator applies to ONNX Runtime models on the GPU: drop --engines "
                                    "(the engines are TensorRT already) and --cpu")
        if self.engines and self.cpu:
            raise TritonOptionError("TensorRT engines run on the GPU only: drop --cpu or --engines")


def write_triton_repository(bundle, out, options: TritonOptions = TritonOptions(), *, force: bool = False) -> Path:
    """Write the model repository for ``bundle`` to the folder ``out`` (atomically) and return it.

    The bundle's graphs (and engines) are checked against their manifest hashes before they are
    copied; ``force`` replaces an earlier repository (a folder holding only these three models).
    """
    bundle, out = Path(bundle), Path(out)
    manifest = load_manifest(bundle)
    engines = _engine_files(bundle, manifest) if options.engines else {}
    max_batch = _max_batch_size(manifest, options, engines)
    preferred = _preferred_sizes(options, max_batch)
    _check_destination(out, bundle, force)
    with atomic_directory(out) as tmp:
        for graph, model in GRAPH_MODELS.items():
            folder = tmp / model / VERSION
            folder.mkdir(parents=True)
            if engines:
                for entry in engines[graph]:
                    shutil.copyfile(bundle / entry.file, folder / entry.file)
            else:
                shutil.copyfile(bundle / manifest.graphs[graph].file, folder / "model.onnx")
            config = graph_model_config(model, manifest.graphs[graph], options, max_batch, preferred,
                                        engines.get(graph, ()))
            (tmp / model / "config.pbtxt").write_text(config)
        folder = tmp / PIPELINE_MODEL / VERSION
        folder.mkdir(parents=True)
        shutil.copyfile(PIPELINE_SOURCE, folder / "model.py")
        shutil.copyfile(bundle / MANIFEST_NAME, folder / MANIFEST_NAME)
        (tmp / PIPELINE_MODEL / "config.pbtxt").write_text(pipeline_model_config(manifest, options, max_batch))
    return out


# ---------------------------------------------------------------------- configurations
def graph_model_config(name: str, graph: GraphEntry, options: TritonOptions, max_batch_size: int,
                       preferred_batch_sizes: tuple, engines=()) -> str:
    """``config.pbtxt`` text of one graph model (batch axis left out of the dims, names as ``-1``)."""
    fields = [("name", name)]
    if engines:
        fields += [("platform", "tensorrt_plan"), ("default_model_filename", engines[0].file),
                   ("cc_model_filenames", [{"key": e.compute_capability, "value": e.file} for e in engines])]
    else:
        fields += [("backend", "onnxruntime"), ("default_model_filename", "model.onnx")]
    fields += [
        ("max_batch_size", max_batch_size),
        ("input", [_tensor_fields(spec, name) for spec in graph.inputs]),
        ("output", [_tensor_fields(spec, name) for spec in graph.outputs]),
        ("dynamic_batching", {"preferred_batch_size": list(preferred_batch_sizes),
                              "max_queue_delay_microseconds": options.max_queue_delay_us}),
        ("instance_group", [{"kind": _Enum("KIND_CPU" if options.cpu else "KIND_GPU"), "count": options.instances}]),
    ]
    if options.trt_accelerator:
        accelerator = {"name": "tensorrt", "parameters": [
            {"key": "precision_mode", "value": "FP16" if options.trt_fp16 else "FP32"},
            {"key": "max_workspace_size_bytes", "value": str(TRT_WORKSPACE_BYTES)}]}
        fields.append(("optimization", {"execution_accelerators": {"gpu_execution_accelerator": [accelerator]}}))
    return _render(fields)


def pipeline_model_config(manifest: Manifest, options: TritonOptions, max_batch_size: int) -> str:
    """``config.pbtxt`` text of the Python pipeline model (one item per request, no batch axis)."""
    rows = manifest.token_rows

    def tensor(name, data_type, dims, optional=False):
        return {"name": name, "data_type": _Enum(data_type), "dims": dims, **({"optional": True} if optional else {})}

    parameters = {"encoder_model": ENCODER_MODEL, "decoder_model": DECODER_MODEL, "max_batch": str(max_batch_size)}
    return _render([
        ("name", PIPELINE_MODEL),
        ("backend", "python"),
        ("max_batch_size", 0),
        ("input", [tensor(AUDIO, "TYPE_FP32", [-1], True), tensor(SAMPLE_RATE, "TYPE_INT32", [1], True),
                   tensor(TOKENS, "TYPE_INT64", [rows, -1], True), tensor(NUM_SAMPLES, "TYPE_INT64", [1], True)]),
        ("output", [tensor(ENCODED_TOKENS, "TYPE_INT64", [rows, -1]), tensor(ENCODED_NUM_SAMPLES, "TYPE_INT64", [1]),
                    tensor(DECODED_AUDIO, "TYPE_FP32", [-1]), tensor(DECODED_SAMPLE_RATE, "TYPE_INT32", [1])]),
        ("instance_group", [{"kind": _Enum("KIND_CPU"), "count": options.pipeline_instances}]),
        ("parameters", [{"key": key, "value": {"string_value": value}} for key, value in parameters.items()]),
    ])


def _tensor_fields(spec, model: str) -> dict:
    if spec.dtype not in TRITON_TYPES:
        raise TritonOptionError(f"{model}: tensor {spec.name!r} has dtype {spec.dtype!r}, which this writer does not "
                                f"map to Triton (known: {', '.join(TRITON_TYPES)}); re-export the bundle")
    if not spec.shape or spec.shape[0] != "batch":
        raise TritonOptionError(f"{model}: tensor {spec.name!r} has shape {list(spec.shape)}, without the dynamic "
                                "'batch' axis first that Triton's batching needs; re-export the bundle")
    dims = [-1 if isinstance(axis, str) else int(axis) for axis in spec.shape[1:]]
    return {"name": spec.name, "data_type": _Enum(TRITON_TYPES[spec.dtype]), "dims": dims}


def _render(fields, indent: int = 0) -> str:
    """Protobuf text format of ``fields``: (name, value) pairs; a dict is a message, a list of dicts a
    repeated message, a list of scalars a repeated scalar."""
    pad = "  " * indent
    lines = []
    for key, value in fields:
        if isinstance(value, dict):
            lines.append(f"{pad}{key} {{\n{_render(value.items(), indent + 1)}{pad}}}")
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            items = ",\n".join(f"{pad}  {{\n{_render(item.items(), indent + 2)}{pad}  }}" for item in value)
            lines.append(f"{pad}{key} [\n{items}\n{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(item) for item in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "".join(line + "\n" for line in lines)


def _scalar(value) -> str:
    if isinstance(value, _Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if not text.isprintable():
        raise TritonOptionError(f"{text!r} holds control characters, which a Triton configuration cannot hold")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'  # protobuf text format's C escapes


# ---------------------------------------------------------------------- checks
def _engine_files(bundle: Path, manifest: Manifest) -> dict:
    """``{graph: (EngineEntry, ...)}`` for ``--engines``, one engine per compute capability, hashes checked."""
    engines = {}
    for graph in GRAPH_MODELS:
        entries = tuple(e for e in manifest.engines if e.graph == graph)
        if not entries:
            raise TritonOptionError(f"bundle {str(bundle)!r} has no TensorRT engine for its {graph}; export it with "
                                    "`meltok-export MODEL -o BUNDLE --engine trt`, or leave out --engines")
        capabilities = [e.compute_capability for e in entries]
        twice = sorted({cc for cc in capabilities if capabilities.count(cc) > 1})
        if twice:
            raise TritonOptionError(f"bundle {str(bundle)!r} has several {graph} engines for compute capability "
                                    f"{', '.join(twice)}; Triton picks engines by compute capability only: keep one")
        for entry in entries:
            verify_file(bundle / entry.file, entry.sha256, what=f"{graph} engine")
        engines[graph] = entries
    return engines


def _max_batch_size(manifest: Manifest, options: TritonOptions, engines: dict) -> int:
    """The graph models' ``max_batch_size``: the option, else the bundle's; never above an engine's profile."""
    engine_max = min((min(ranges["max"][0] for ranges in e.profile.values())
                      for entries in engines.values() for e in entries), default=None)
    if options.max_batch_size is not None:
        if engine_max is not None and options.max_batch_size > engine_max:
            raise TritonOptionError(f"--max-batch-size {options.max_batch_size} exceeds the batch of {engine_max} "
                                    "the bundle's engines were built for; choose at most that, or re-export with "
                                    "a larger --max-batch")
        return options.max_batch_size
    default = int(manifest.limits.get("max_batch") or DEFAULT_MAX_BATCH)
    return min(default, engine_max) if engine_max is not None else default


def _preferred_sizes(options: TritonOptions, max_batch: int) -> tuple:
    if options.preferred_batch_sizes is None:
        return tuple(2 ** k for k in range(1, max_batch.bit_length()) if 2 ** k <= max_batch)
    too_large = [size for size in options.preferred_batch_sizes if size > max_batch]
    if too_large:
        raise TritonOptionError(f"preferred batch sizes {too_large} exceed max_batch_size {max_batch}; choose "
                                "smaller ones or a larger --max-batch-size")
    return tuple(sorted(set(options.preferred_batch_sizes)))


def _check_destination(out: Path, bundle: Path, force: bool) -> None:
    """Refuse to replace anything but an earlier repository of these three models (before any work)."""
    check_new_folder(out, inputs=(bundle,), force=force)
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in (*GRAPH_MODELS.values(), PIPELINE_MODEL))
        if others:
            raise ExportDestinationError(f"{str(out)!r} holds files that are not meltok's Triton models "
                                         f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); writing the "
                                         "repository replaces the folder as a whole: give a new folder name")


# ---------------------------------------------------------------------- client side
def client_inputs(*, audio=None, sample_rate: int | None = None, tokens=None, num_samples: int | None = None,
                  protocol: str = "grpc") -> list:
    """The ``tritonclient`` ``InferInput``s of one request to the ``meltok`` model.

    Encode: ``audio`` (float32 ``[N]``, mono) and its ``sample_rate``; the response holds
    ``encoded_tokens`` (int64 ``[rows, T']``) and ``encoded_num_samples``. Decode: ``tokens``
    (``[rows, T']``), optionally ``num_samples`` (the length to return) and ``sample_rate`` (the rate
    to return, default the model's); the response holds ``decoded_audio`` and ``decoded_sample_rate``.
    ``protocol``: ``grpc`` (the ``serve`` extra) or ``http`` (``pip install 'tritonclient[http]'``).
    """
    import numpy as np

    if protocol not in ("http", "grpc"):
        raise TritonOptionError(f"protocol is {protocol!r}; expected 'http' or 'grpc'")
    if (audio is None) == (tokens is None):
        raise TritonOptionError("a request holds either audio (to encode) or tokens (to decode), not both or none")
    if audio is not None and sample_rate is None:
        raise TritonOptionError("audio needs its sample_rate")
    install = "pip install -e '.[serve]'" if protocol == "grpc" else "pip install 'tritonclient[http]'"
    client = import_optional(f"tritonclient.{protocol}", install=install, purpose="a Triton client request")
    arrays = {AUDIO: None if audio is None else np.asarray(audio, dtype=np.float32),
              TOKENS: None if tokens is None else np.asarray(tokens, dtype=np.int64),
              SAMPLE_RATE: None if sample_rate is None else np.array([sample_rate], dtype=np.int32),
              NUM_SAMPLES: None if num_samples is None else np.array([num_samples], dtype=np.int64)}
    inputs = []
    for name, array in arrays.items():
        if array is None:
            continue
        tensor = client.InferInput(name, list(array.shape), WIRE_TYPES[TRITON_TYPES[array.dtype.name]])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def describe(repo) -> str:
    """One line per model of a written repository (for the command line)."""
    repo = Path(repo)
    return "\n".join(f"  {model}/: {', '.join(sorted(p.name for p in (repo / model / VERSION).iterdir()))}"
                     for model in (*GRAPH_MODELS.values(), PIPELINE_MODEL))
