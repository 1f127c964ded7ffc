"""Counted cost of the MelTok graphs, and the floor it sets on this machine.

Counts the FLOPs of every stage of the two exported graphs with ``torch.utils.flop_counter.FlopCounterMode``
(matrix multiplies, convolutions and attention; element-wise work is not counted), on a ``meta`` copy
of the model, so counting runs no arithmetic and takes seconds even for the paper configuration:

- encoder graph (audio -> tokens): ``log-mel`` (conv STFT + mel filterbank), ``2d-encoder`` (2D tokenizer
  encoder + quant_conv), ``vq`` (codebook distances; argmin is not counted);
- decoder graph (tokens -> audio): ``2d-decoder`` (codebook lookup, post_quant_conv, 2D decoder),
  ``vocoder`` (Vocos backbone + ISTFT head).

Then measures this machine's matrix-multiply rate (``torch.matmul`` of large square matrices: float32 on
the CPU with ``--threads`` threads; on CUDA, when available, float32, TF32 and float16) and prints
GFLOP per second of audio per stage and the resulting floor: the time the counted FLOPs take at the
measured rate, for ``--seconds`` (default 10) of audio at batch 1.

    python benchmarks/cost.py --threads 2 --json cost.json
    python benchmarks/cost.py --presets tiny --model my_model.safetensors

Attention is global over the whole input, so its cost grows with the square of the length: the
per-second figures are those of a ``--seconds`` long input (the runtime's default window is 10 s).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

ENCODER_STAGES = ("log-mel", "2d-encoder", "vq")
DECODER_STAGES = ("2d-decoder", "vocoder")
GRAPHS = {"encoder": ENCODER_STAGES, "decoder": DECODER_STAGES}
DEFAULT_PRESETS = ("paper", "edge", "tiny")
DEFAULT_MODEL_FILE = Path(__file__).resolve().parents[1] / "meltok" / "assets" / "default.safetensors"


# ------------------------------------------------------------------------------------------- models
def load_model(source: str, *, seed: int = 0):
    """A ``meltok.MelTok`` from a preset name (random weights, seeded) or a model file path; and its label."""
    import torch

    from meltok import PRESETS, MelTok

    if source in PRESETS:
        torch.manual_seed(seed)
        model = MelTok.from_config(source)
        return model, f"{model.config.name} (random)"
    model = MelTok.load(source)
    return model, f"{model.config.name} ({Path(source).name})"


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def count_stage_flops(model, seconds: float = 10.0, batch: int = 1) -> dict:
    """FLOPs of each stage for ``batch`` x ``seconds`` of audio (unpadded, like the reference ``tokenize``).

    Runs a ``meta`` copy of ``model``: shapes only, no arithmetic, no memory for activations.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta").eval()
    samples = max(int(round(seconds * model.sample_rate)), model.config.frontend.n_fft)
    audio = torch.zeros(batch, samples, device="meta")
    flops = {}

    def counted(name, fn, *args):
        with FlopCounterMode(display=False) as counter:
            out = fn(*args)
        flops[name] = int(counter.get_total_flops())
        return out

    with torch.inference_mode():
        mel = counted("log-mel", meta.log_mel, audio)
        latent = counted("2d-encoder", meta.latent, mel)
        tokens = counted("vq", meta.quantizer.tokenize, latent)
        tokens = torch.zeros(tokens.shape, dtype=torch.long, device="meta")
        mel_out = counted("2d-decoder", lambda t: meta.decode_features(meta.quantizer.lookup(t)), tokens)
        counted("vocoder", meta.vocode, mel_out)
    return flops


def graph_flops_per_second(model, seconds: float = 10.0) -> dict:
    """``{"encoder": FLOPs per second of audio, "decoder": ...}`` counted on a ``seconds`` input, batch 1."""
    stages = count_stage_flops(model, seconds)
    return {graph: sum(stages[s] for s in names) / seconds for graph, names in GRAPHS.items()}


# ------------------------------------------------------------------------------------ matmul rate
def matmul_rate(device: str = "cpu", dtype: str = "float32", *, size: int = 2048, repeats: int = 5,
                tf32: bool = False) -> float:
    """Measured FLOP/s of ``torch.matmul`` of two ``size`` x ``size`` matrices: the best of ``repeats``.

    The best, not the median: the floor is what the machine can do, and on a shared machine the slower
    repeats measure the other processes. On the CPU it uses the threads torch is set to; on CUDA it
    times with CUDA events, TF32 only when ``tf32`` (float32 inputs).
    """
    import torch

    torch_dtype = getattr(torch, dtype)
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=torch_dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=torch_dtype)
    flops = 2.0 * size ** 3
    times = []
    if device.startswith("cuda"):
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
        try:
            for _ in range(3):
                torch.matmul(a, b)
            torch.cuda.synchronize()
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                torch.matmul(a, b)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
    else:
        torch.matmul(a, b)
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b)
            times.append(time.perf_counter() - start)
    return flops / min(times)


def measure_rates(threads: int, *, cpu_size: int = 2048, cuda_size: int = 8192, repeats: int = 5,
                  cuda: bool | None = None) -> dict:
    """``{rate name: FLOP/s}``: ``cpu-fp32`` and, on CUDA, ``cuda-fp32``, ``cuda-tf32``, ``cuda-fp16``."""
    import torch

    rates = {"cpu-fp32": matmul_rate("cpu", "float32", size=cpu_size, repeats=repeats)}
    if cuda is None:
        cuda = torch.cuda.is_available()
    if cuda:
        rates["cuda-fp32"] = matmul_rate("cuda", "float32", size=cuda_size, repeats=repeats)
        rates["cuda-tf32"] = matmul_rate("cuda", "float32", size=cuda_size, repeats=repeats, tf32=True)
        rates["cuda-fp16"] = matmul_rate("cuda", "float16", size=cuda_size, repeats=repeats)
    return rates


def machine_description(threads: int) -> dict:
    """CPU model, core count, threads used, and the GPU where CUDA is available."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def load_warning(machine: dict) -> str | None:
    """A warning line when the 1-minute load average exceeds the core count (timings then are noisy)."""
    load, cores = (machine.get("load_average") or [None])[0], machine.get("cores")
    if load is not None and cores and load > cores:
        return (f"warning: load average {load:.1f} on {cores} cores: other processes compete for the CPU, "
                "timings are noisy (multi-threaded PyTorch suffers most)")
    return None


# ------------------------------------------------------------------------------------------- report
def format_table(rows: list[list[str]], header: list[str], right: set[int] | None = None) -> str:
    """Plain-text table with aligned columns (columns in ``right`` right-aligned)."""
    right = set(range(1, len(header))) if right is None else right
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _gflop(x: float) -> str:
    return f"{x / 1e9:.3g}" if x < 1e11 else f"{x / 1e9:.0f}"


def _ms(x: float) -> str:
    return f"{x:.3g}" if x < 1000 else f"{x:.0f}"


def cost_table(report: dict) -> str:
    seconds = report["seconds"]
    rate_names = list(report["rates"])
    header = ["model", "graph", "stage", "params M", "GFLOP/s audio"] + \
             [f"floor ms/{seconds:g}s {name}" for name in rate_names]
    rows = []
    for label, entry in report["models"].items():
        first = True
        for graph, stages in GRAPHS.items():
            for stage in (*stages, "total"):
                per_second = entry["graphs"][graph] if stage == "total" else entry["stages"][stage] / seconds
                floors = [_ms(per_second * seconds / report["rates"][name] * 1e3) for name in rate_names]
                rows.append([label if first else "", graph if stage == stages[0] else "", stage,
                             f"{entry['params'] / 1e6:.1f}" if first else "", _gflop(per_second), *floors])
                first = False
    return format_table(rows, header, right=set(range(3, len(header))))


# --------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=",".join(DEFAULT_PRESETS),
                        help="comma-separated presets to count (random weights; default: %(default)s); '' for none")
    parser.add_argument("--model", action="append", default=[], metavar="PATH",
                        help="a meltok model file to count as well (repeatable); the shipped default model "
                             "is added when it exists unless --no-default-model")
    parser.add_argument("--no-default-model", action="store_true")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="length of the counted input and of the floor (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for the matmul rate")
    parser.add_argument("--matmul-size", type=int, default=2048, help="CPU matrix size (default: %(default)s)")
    parser.add_argument("--cuda-matmul-size", type=int, default=8192)
    parser.add_argument("--matmul-repeats", type=int, default=5)
    parser.add_argument("--no-cuda", action="store_true", help="do not measure CUDA rates even where available")
    parser.add_argument("--json", metavar="PATH", help="write the figures to this JSON file")
    return parser.parse_args(argv)


def model_sources(presets: str, models: list, no_default: bool) -> list[str]:
    sources = [p.strip() for p in presets.split(",") if p.strip()]
    sources += [str(m) for m in models]
    if not no_default and DEFAULT_MODEL_FILE.is_file() and str(DEFAULT_MODEL_FILE) not in sources:
        sources.append(str(DEFAULT_MODEL_FILE))
    return sources


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    report = {"seconds": args.seconds, "batch": 1, "counted": "torch.utils.flop_counter.FlopCounterMode "
              "(matmul, conv, attention; element-wise ops not counted)", "models": {}}
    for source in model_sources(args.presets, args.model, args.no_default_model):
        model, label = load_model(source)
        stages = count_stage_flops(model, args.seconds)
        report["models"][label] = {
            "source": source, "name": model.config.name, "params": parameter_count(model), "stages": stages,
            "stages_per_second": {k: v / args.seconds for k, v in stages.items()},
            "graphs": {g: sum(stages[s] for s in names) / args.seconds for g, names in GRAPHS.items()}}
        del model
    report["machine"] = machine_description(args.threads)
    rates = measure_rates(args.threads, cpu_size=args.matmul_size, cuda_size=args.cuda_matmul_size,
                          repeats=args.matmul_repeats, cuda=False if args.no_cuda else None)
    report["rates"] = rates
    report["matmul"] = {"cpu_size": args.matmul_size, "cuda_size": args.cuda_matmul_size,
                        "repeats": args.matmul_repeats}
    for entry in report["models"].values():
        entry["floor_ms"] = {name: {g: entry["graphs"][g] * args.seconds / rate * 1e3 for g in GRAPHS}
                             for name, rate in rates.items()}
    machine = report["machine"]
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, torch threads {args.threads}"
          + (f", GPU {machine['gpu']}" if "gpu" in machine else "")
          + (f", load average {machine['load_average'][0]:.1f}" if "load_average" in machine else ""))
    print("matmul rate: " + ", ".join(f"{name} {rate / 1e9:.1f} GFLOP/s" for name, rate in rates.items()))
    if load_warning(machine):
        print(load_warning(machine))
    print(f"FLOPs counted on a {args.seconds:g} s input, batch 1 ({report['counted']}); "
          f"floor = counted FLOPs / matmul rate, for {args.seconds:g} s of audio\n")
    print(cost_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
    sys.exit(0)
