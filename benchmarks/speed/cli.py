"""``python -m benchmarks.speed``: arguments, the loop over models and configurations, the summary."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import cost

from .backends import BACKENDS, GRAPH_OF, OPS, check_backend, cuda_available, short
from .bundles import model_sources, prepare_bundle
from .report import percentile, render_availability, render_table, speedups, write_png
from .worker import MUSIC, ROOT, SAMPLE_RATE, load_music, run_isolated, worker_main

DEFAULT_MODEL_FILE = ROOT / "meltok" / "assets" / "default.safetensors"
DEFAULT_BUNDLE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "meltok" / "bench-bundles"
FLOP_ESTIMATE_EFFICIENCY = 1 / 3  # first estimate of a backend: counted FLOPs at a third of the matmul rate


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="paper", help="comma-separated presets, random weights (default: paper)")
    parser.add_argument("--model", action="append", default=[], metavar="PATH", help="model file (repeatable)")
    parser.add_argument("--no-default-model", action="store_true",
                        help=f"leave out the shipped default model ({DEFAULT_MODEL_FILE.relative_to(ROOT)})")
    parser.add_argument("--backends", default="all", help=f"comma-separated, from {', '.join(BACKENDS)} (default: all)")
    parser.add_argument("--batches", default="1,16", help="comma-separated batch sizes (default: %(default)s)")
    parser.add_argument("--seconds", default="1,10,60", help="comma-separated audio lengths in s (default: %(default)s)")
    parser.add_argument("--ops", default="encode,decode")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads: torch and ONNX Runtime intra-op")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default: %(default)s)")
    parser.add_argument("--mode", choices=("api", "graph"), default="api",
                        help="api: the windowed numpy API; graph: one bare graph call on the whole input")
    parser.add_argument("--window-seconds", type=float, default=None,
                        help="window of the API mode, for every backend (default: the library's, 12 s)")
    parser.add_argument("--budget-seconds", type=float, default=120.0,
                        help="skip a configuration whose estimated time exceeds this (default: %(default)s)")
    parser.add_argument("--bundle-dir", default=str(DEFAULT_BUNDLE_DIR),
                        help="where bundles are exported and reused (default: %(default)s)")
    parser.add_argument("--bundle", action="append", default=[], metavar="BACKEND=PATH",
                        help="use this bundle for a runtime backend (e.g. ort-cpu-int8=PATH); it must hold the "
                             "same model weights")
    parser.add_argument("--verify-seconds", type=float, default=None,
                        help="length of the exporter's verification clip (default: the exporter's)")
    parser.add_argument("--matmul-size", type=int, default=2048, help="CPU matrix size of the rate measurement")
    parser.add_argument("--no-isolate", action="store_true",
                        help="run configurations in this process (faster; peak memory then is not per configuration)")
    parser.add_argument("--json", metavar="PATH", help="write every figure to this JSON file")
    parser.add_argument("--png", metavar="PATH", help="write a chart of x-real-time to this PNG file")
    parser.add_argument("--music", default=str(MUSIC), help="44.1 kHz clip tiled into the inputs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the presets' random weights")
    args = parser.parse_args(argv)
    args.batch_list = [int(b) for b in args.batches.split(",") if b.strip()]
    args.seconds_list = [float(s) for s in args.seconds.split(",") if s.strip()]
    args.op_list = [o.strip() for o in args.ops.split(",") if o.strip()]
    args.backend_list = list(BACKENDS) if args.backends == "all" else [b.strip() for b in args.backends.split(",")
                                                                       if b.strip()]
    unknown = [b for b in args.backend_list if b not in BACKENDS] + [o for o in args.op_list if o not in OPS]
    if unknown:
        parser.error(f"unknown backend or op {unknown}; backends: {', '.join(BACKENDS)}; ops: {', '.join(OPS)}")
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("need --threads >= 1, --repeats >= 1, --warmup >= 0")
    args.bundle_map = {}
    for item in args.bundle:
        name, _, path = item.partition("=")
        if name not in BACKENDS or BACKENDS[name]["kind"] != "runtime" or not path:
            parser.error(f"--bundle takes RUNTIME_BACKEND=PATH, got {item!r}")
        args.bundle_map[name] = path
    return args


def estimate_seconds(history: dict, key: tuple, work: float, flops: float, rate: float | None, calls: int) -> float:
    """Estimated wall time of ``calls`` calls on ``work`` = batch x seconds of audio."""
    per_work = history.get(key)
    if per_work is None:
        if not rate:
            return 0.0
        per_work = flops / (rate * FLOP_ESTIMATE_EFFICIENCY)
    return per_work * work * calls


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        sys.exit(worker_main(argv[1]))
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from meltok.modelfile import weights_hash

    cuda = cuda_available()
    machine = cost.machine_description(args.threads)
    rates = cost.measure_rates(args.threads, cpu_size=args.matmul_size, repeats=3, cuda=cuda)
    if cuda:
        torch.cuda.empty_cache()  # the workers, not this process, should hold the GPU's memory
    report = {"machine": machine, "rates": rates, "models": {}, "availability": {}, "results": [],
              "args": {k: v for k, v in vars(args).items() if k not in ("bundle_map",)}}
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, {args.threads} threads"
          + (f", GPU {machine['gpu']}" if "gpu" in machine else "")
          + (f", load average {machine['load_average'][0]:.1f}" if "load_average" in machine else ""), flush=True)
    print("matmul rate: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in rates.items()), flush=True)

    library = {name: check_backend(name, cuda) for name in args.backend_list}
    sources = model_sources(args)
    if not args.no_default_model:
        if DEFAULT_MODEL_FILE.is_file():
            if str(DEFAULT_MODEL_FILE) not in [s.get("file") for s in sources]:
                sources.append({"file": str(DEFAULT_MODEL_FILE)})
        else:
            report["availability"]["default model"] = {
                "*": f"not available: no shipped default model at {DEFAULT_MODEL_FILE.relative_to(ROOT)}"}
    load_music(args.music)  # fail early on a missing or wrong clip; each worker reads it again
    history: dict = {}
    workdir_context = tempfile.TemporaryDirectory(prefix="meltok-speed-")
    workdir = Path(workdir_context.name)
    counter = 0
    try:
        for source in sources:
            if source.get("preset"):
                torch.manual_seed(source["seed"])
                from meltok import MelTok

                model = MelTok.from_config(source["preset"])
                label = f"{model.config.name}(random)"
            else:
                from meltok import MelTok

                model = MelTok.load(source["file"])
                label = f"{model.config.name}({Path(source['file']).stem})"
            sha = weights_hash(model.state_dict())
            flops = cost.graph_flops_per_second(model, seconds=10.0)
            report["models"][label] = {"source": source, "name": model.config.name, "model_sha256": sha,
                                       "params": cost.parameter_count(model),
                                       "flops_per_audio_second": flops}
            available, bundles = {}, {}
            for name in args.backend_list:
                reason = library[name]
                if reason is None and BACKENDS[name]["kind"] == "runtime":
                    bundles[name], reason = prepare_bundle(model, label, sha, name, args)
                available[name] = reason
            report["availability"][label] = {k: v for k, v in available.items()}
            report["models"][label]["bundles"] = bundles
            rows, columns = model.token_rows, None
            codebook = model.codebook_size
            hop, compression = model.hop_length, model.config.tokenizer.compression
            del model
            configs = sorted(((b, s) for b in args.batch_list for s in args.seconds_list), key=lambda c: c[0] * c[1])
            for batch, seconds in configs:
                tokens_path = None
                reference = None  # (backend, tokens) of the first successful encode
                for op in args.op_list:
                    if op == "decode" and tokens_path is None:
                        from meltok_runtime.lengths import padded_length, token_columns

                        columns = token_columns(padded_length(int(round(seconds * SAMPLE_RATE)), hop, compression),
                                                hop, compression)
                        rng = np.random.default_rng(0)
                        tokens_path = workdir / f"random-{counter}.npy"
                        np.save(tokens_path, rng.integers(0, codebook, (batch, rows, columns), dtype=np.int32))
                        token_source = "random (no encode ran)"
                    for name in args.backend_list:
                        if available[name] is not None:
                            continue
                        backend = BACKENDS[name]
                        counter += 1
                        entry = {"model": label, "op": op, "batch": batch, "seconds": seconds, "backend": name,
                                 "device": backend["device"], "mode": args.mode}
                        work = batch * seconds
                        floor_rate = rates.get(backend["rate"])
                        graph_flops = flops[GRAPH_OF[op]] * work
                        entry["floor_ms"] = graph_flops / floor_rate * 1e3 if floor_rate else None
                        estimate = estimate_seconds(history, (label, name, op), work, flops[GRAPH_OF[op]],
                                                    floor_rate, args.warmup + args.repeats)
                        entry["estimated_s"] = estimate
                        if estimate > args.budget_seconds:
                            entry["status"] = (f"skipped: over budget (estimated {estimate:.0f} s > "
                                               f"{args.budget_seconds:g} s)")
                            report["results"].append(entry)
                            print(f"  {label} {op} B{batch} {seconds:g}s {name}: {entry['status']}", flush=True)
                            continue
                        spec = {"id": f"c{counter}", "backend": name, "model": source, "model_sha256": sha,
                                "op": op, "batch": batch, "seconds": seconds, "threads": args.threads,
                                "warmup": args.warmup, "repeats": args.repeats, "mode": args.mode,
                                "window_seconds": args.window_seconds, "bundle": bundles.get(name),
                                "music": args.music}
                        if op == "encode":
                            spec["tokens_out"] = str(workdir / f"tokens-{counter}.npy")
                        else:
                            spec["tokens_in"] = str(tokens_path)
                        timeout = 600 + 3 * max(args.budget_seconds, estimate)
                        started = time.perf_counter()
                        result = run_isolated(spec, workdir, timeout, isolate=not args.no_isolate)
                        entry["wall_s"] = time.perf_counter() - started
                        if "error" in result:
                            entry["status"] = f"failed: {short(result['error'], 200)}"
                            entry["traceback"] = result.get("traceback")
                            report["results"].append(entry)
                            print(f"  {label} {op} B{batch} {seconds:g}s {name}: {entry['status']}", flush=True)
                            continue
                        times = result.pop("times_ms")
                        entry.update(result)
                        entry.update(status="ok", times_ms=times, median_ms=float(np.median(times)),
                                     p90_ms=percentile(times, 90))
                        entry["rtf"] = entry["median_ms"] / 1e3 / work
                        entry["x_realtime"] = 1.0 / entry["rtf"]
                        entry["x_floor"] = entry["median_ms"] / entry["floor_ms"] if entry["floor_ms"] else None
                        entry["achieved_gflops"] = graph_flops / (entry["median_ms"] / 1e3) / 1e9
                        history[(label, name, op)] = entry["median_ms"] / 1e3 / work
                        if op == "encode":
                            tokens = np.load(spec["tokens_out"])
                            if reference is None:
                                reference = (name, tokens)
                                tokens_path = Path(spec["tokens_out"])
                                token_source = f"{name} encode"
                            if reference[1].shape == tokens.shape:
                                entry["token_agreement"] = float(np.mean(reference[1] == tokens))
                            entry["token_reference"] = reference[0]
                        else:
                            entry["tokens_from"] = token_source
                        report["results"].append(entry)
                        print(f"  {label} {op} B{batch} {seconds:g}s {name}: median {entry['median_ms']:.1f} ms, "
                              f"x{entry['x_realtime']:.2f} real time", flush=True)
        speedups(report["results"])
    finally:
        workdir_context.cleanup()

    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    if args.png:
        write_png(report, args.png)
    print()
    machine = cost.machine_description(args.threads)  # the load at the end of the run
    report["machine"]["load_average_end"] = machine.get("load_average")
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, {args.threads} threads"
          + (f", GPU {machine['gpu']}" if "gpu" in machine else "") + "; matmul rate: "
          + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in rates.items()) + f"; mode {args.mode}")
    for when, info in (("start", report["machine"]), ("end", machine)):
        if cost.load_warning(info):
            print(f"{cost.load_warning(info)} (at the {when} of the run)")
    print(render_availability(report))
    print()
    print(render_table(report["results"]))
    return report
