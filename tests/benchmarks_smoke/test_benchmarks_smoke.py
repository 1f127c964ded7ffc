"""Smoke test of the benchmarks: each main() runs once on the tiny preset (figures not asserted).

``benchmarks`` is a package run from the repository root (``python -m benchmarks.speed``), as here.
"""
import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


def table_lines(output: str, first_header_cell: str) -> list[str]:
    """The lines of the table printed last: from its header line to the end of the output."""
    lines = output.rstrip().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith(first_header_cell))
    return lines[start + 2:]  # below the header and its dashes


def test_cost_main_counts_every_stage_of_the_tiny_preset(tmp_path, capsys):
    from benchmarks import cost

    out_json = tmp_path / "cost.json"
    report = cost.main(["--presets", "tiny", "--no-default-model", "--seconds", "1", "--threads", "1",
                        "--matmul-size", "256", "--matmul-repeats", "1", "--no-cuda", "--json", str(out_json)])
    output = capsys.readouterr().out
    rows = table_lines(output, "model")
    assert rows[0].startswith("meltok-tiny (random)")
    names = {"log-mel", "2d-encoder", "vq", "2d-decoder", "vocoder", "total"}
    stages = [next(cell for cell in row.split() if cell in names) for row in rows]
    assert stages == ["log-mel", "2d-encoder", "vq", "total", "2d-decoder", "vocoder", "total"]
    assert "floor ms/1s cpu-fp32" in output
    written = json.loads(out_json.read_text())
    assert list(written["models"]) == ["meltok-tiny (random)"] == list(report["models"])
    entry = written["models"]["meltok-tiny (random)"]
    assert set(entry["stages"]) == {"log-mel", "2d-encoder", "vq", "2d-decoder", "vocoder"}
    assert set(entry["graphs"]) == {"encoder", "decoder"} and all(v > 0 for v in entry["graphs"].values())
    assert set(written["rates"]) == {"cpu-fp32"} and written["rates"]["cpu-fp32"] > 0
    assert set(entry["floor_ms"]["cpu-fp32"]) == {"encoder", "decoder"}


def test_speed_main_times_torch_and_ort_cpu_on_the_tiny_preset(tmp_path, capsys):
    from benchmarks import speed

    out_json, out_png = tmp_path / "speed.json", tmp_path / "speed.png"
    report = speed.main(["--presets", "tiny", "--no-default-model", "--seconds", "1", "--batches", "1",
                         "--repeats", "1", "--warmup", "1", "--threads", "1", "--backends", "torch-cpu-fp32,ort-cpu-fp32",
                         "--bundle-dir", str(tmp_path / "bundles"), "--verify-seconds", "1", "--matmul-size", "256",
                         "--budget-seconds", "600", "--json", str(out_json), "--png", str(out_png)])
    output = capsys.readouterr().out
    rows = [row.split() for row in table_lines(output, "model")]
    expected = {(op, backend) for op in ("encode", "decode") for backend in ("torch-cpu-fp32", "ort-cpu-fp32")}
    assert {(row[1], row[4]) for row in rows} == expected and len(rows) == 4
    assert all(row[0] == "meltok-tiny(random)" and row[2:4] == ["1", "1"] and row[-1] == "ok" for row in rows)
    assert "meltok-tiny(random) ort-cpu-fp32: available" in output
    written = json.loads(out_json.read_text())
    results = written["results"]
    assert {(r["op"], r["backend"]) for r in results} == expected
    for r in results:
        assert r["status"] == "ok" and len(r["times_ms"]) == 1 and r["calls"] == 1  # 1 s: one window
        assert {"median_ms", "p90_ms", "rtf", "x_realtime", "speedup_vs_eager", "floor_ms", "peak_rss_mb"} <= set(r)
        assert r["peak_rss_mb"] > 0
    eager = [r for r in results if r["backend"] == "torch-cpu-fp32"]
    assert all(r["speedup_vs_eager"] == pytest.approx(1.0) for r in eager)
    encodes = [r for r in results if r["op"] == "encode"]
    assert all(0.0 <= r["token_agreement"] <= 1.0 for r in encodes)
    assert all(r["tokens_from"] == "torch-cpu-fp32 encode" for r in results if r["op"] == "decode")
    assert written["availability"]["meltok-tiny(random)"] == {"torch-cpu-fp32": None, "ort-cpu-fp32": None}
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["results"] == json.loads(json.dumps(report["results"], default=str))


def test_mel_decoder_probe_reads_the_inputs_tones_and_levels(tmp_path, capsys, real_clip_paths):
    """On a random-weight tiny model the decoded columns are noise, but the input's side is the real
    measurement: the tones' mel bands rise 2.3 nats per 20 dB, the inverter reads every tone's frequency
    from the input's own log-mel within 0.5%, and each clip gets a level per gain."""
    from benchmarks import mel_decoder
    from meltok import MelTok

    model = tmp_path / "tiny-mel.safetensors"
    MelTok.from_config("tiny").with_vocoder_head("mel_inversion").save(model)
    report = mel_decoder.main([str(model), "--clips", str(real_clip_paths["speech"]), "--seconds", "1.5"])
    output = capsys.readouterr().out
    assert "median |error|" in output and "(output level re input, dB;" in output
    for frequency in mel_decoder.TONE_LEVEL_HZ:
        inputs = [row[3] for row in report["tone_level"] if row[0] == frequency]
        assert np.allclose(np.diff(inputs), -20 / 20 * np.log(10), atol=0.15), inputs  # -6, -26, -46 dBFS
    assert len(report["tone_frequency"]) == len(mel_decoder.TONE_FREQUENCIES)
    assert max(abs(row[1]) for row in report["tone_frequency"]) < 0.5
    (path, levels, changed), = report["gain"]
    assert path == str(real_clip_paths["speech"]) and len(levels) == len(changed) == len(mel_decoder.GAINS_DB)
    assert all(np.isfinite(levels)) and changed[0] == 0.0 and all(0.0 <= share <= 1.0 for share in changed)
