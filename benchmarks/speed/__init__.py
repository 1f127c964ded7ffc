"""Encode and decode speed of every MelTok backend, side by side, on the same real audio, in one run.

For each model (``--presets``, random weights, seeded; ``--model`` files; the shipped default model
``meltok/assets/default.safetensors`` when it exists), each batch size and audio length, and each
backend available here, runs encode (audio -> tokens) and decode (tokens -> audio) with warm-up and
repeated timed runs, and reports the median and p90 latency, the real-time factor, x-real-time, the
speed-up against PyTorch eager on the same device, the FLOP floor (``cost.py``) and how far each
backend is from it, the peak memory and the token agreement with the reference encode.

Backends (``--backends``, default all; one not available here is listed with the reason):

- ``torch-cpu-fp32``: PyTorch eager, float32, CPU (the reference; ``vs eager`` of CPU backends);
- ``torch-cuda-fp32`` (TF32 off; ``vs eager`` of GPU backends), ``torch-cuda-tf32``, ``torch-cuda-fp16``
  (autocast float16);
- ``ort-cpu-fp32``, ``ort-cpu-int8`` (an int8 bundle, ``meltok-export --precision int8``: the trunk quantized
  by ONNX Runtime, float32 islands; or given with ``--bundle ort-cpu-int8=PATH``; its ``x floor`` is against
  the float32 matmul rate), ``ort-cuda-fp32``, ``ort-cuda-fp16``, ``trt-fp16``: ``meltok_runtime`` on an
  export bundle.

Every configuration (model, backend, op, batch, length) runs in a fresh subprocess, so its peak RSS
(``VmHWM`` of ``/proc/self/status``; ``resource.getrusage`` where there is no ``/proc``) is its own; on CUDA the peak device memory is ``torch.cuda.max_memory_allocated``
for torch backends and the process's device memory sampled with NVML (``nvidia-ml-py``) for the others.
Configurations whose estimated time (warm-up + repeats) exceeds ``--budget-seconds`` are skipped and
listed as "skipped: over budget". The estimate comes from the same backend's previous (smaller)
configuration, or for the first one from the counted FLOPs at a third of the measured matmul rate.

    python -m benchmarks.speed --threads 2 --json speed.json --png speed.png
    python -m benchmarks.speed --presets tiny --seconds 1 --batches 1 --repeats 1 --backends torch-cpu-fp32,ort-cpu-fp32

``--mode api`` (default) times the user API (``MelTok.encode``/``decode`` and ``meltok_runtime.Codec``,
numpy in and out, inputs longer than one window processed in windows with context, the same window plan
for all backends); ``--mode graph`` times one call of the bare graph on the whole input (``MelTok.tokenize``/
``detokenize`` and the runtime backend's ``run``), as the DESIGN measurements did.

Modules: ``backends`` (what each backend is and whether it can run here), ``worker`` (one configuration,
timed in its own process), ``bundles`` (export or reuse the
bundles), ``report`` (table, chart), ``cli`` (the entry point: ``python -m benchmarks.speed``).
"""
from .cli import main

__all__ = ["main"]
