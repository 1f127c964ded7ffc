"""INT8 export verification figures of random-weight presets (the README's INT8 table).

    python -m benchmarks.int8_presets [--presets tiny edge] [--seed 0] [--verify-seconds 6]

For each preset, a seeded random-weight model is exported to fp32 graphs, quantized exactly as
``meltok-export --precision int8`` does, and verified against the PyTorch model on the shipped
verification clip. Prints token agreement and mel distance against the int8 limits, and whether the
export would pass (``meltok-export`` refuses a bundle that fails).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def measure(preset: str, seed: int, verify_seconds: float) -> dict:
    import torch

    from meltok import MelTok
    from meltok_export.bundle import draft_manifest
    from meltok_export.onnx_export import export_onnx
    from meltok_export.quantize import quantize_graphs
    from meltok_export.verify import verify_graphs

    torch.manual_seed(seed)
    model = MelTok.from_config(preset).eval()
    with tempfile.TemporaryDirectory(prefix="meltok-int8-") as scratch:
        folder = Path(scratch)
        export_onnx(model, folder, precision="fp32")
        graphs, _ = quantize_graphs(folder, model)
        report = verify_graphs(model, folder, draft_manifest(model, graphs), max_seconds=verify_seconds)
    return {"preset": preset, "seed": seed, "token_agreement": report["token_agreement"],
            "mel_distance": report["mel_distance"], "passed": report["passed"], "failures": report["failures"]}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "edge"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verify-seconds", type=float, default=6.0)
    args = parser.parse_args(argv)
    from meltok_export.contract import INT8_MEL_DISTANCE_MAX, INT8_TOKEN_FLOOR

    rows = [measure(preset, args.seed, args.verify_seconds) for preset in args.presets]
    print(f"limits: token agreement >= {INT8_TOKEN_FLOOR}, mel distance <= {INT8_MEL_DISTANCE_MAX}")
    print(f"{'preset':10} {'seed':>4} {'tokens':>8} {'mel distance':>13}  verification")
    for row in rows:
        print(f"{row['preset']:10} {row['seed']:>4} {row['token_agreement']:>8.2%} {row['mel_distance']:>13.3f}  "
              + ("passes" if row["passed"] else "FAILS: " + "; ".join(row["failures"])))
    return rows


if __name__ == "__main__":
    main()
