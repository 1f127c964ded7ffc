"""Smoke test of ``benchmarks/serve.py`` at a tiny size: a real server, every mode and operation once."""
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("uvicorn")


def test_serve_benchmark_prints_a_row_per_mode_operation_and_client_count(capsys):
    from benchmarks import serve

    report = serve.main(["--clients", "1,2", "--seconds", "1", "--requests", "1", "--threads", "1", "--rounds", "2",
                         "--modes", "batched,inproc", "--ops", "encode,decode,stream"])
    rows = report["rows"]
    assert [(r["mode"], r["op"], r["clients"]) for r in rows] == [
        ("batched", op, n) for op in ("encode", "decode", "stream") for n in (1, 2)] + [
        ("inproc", op, n) for op in ("encode", "decode") for n in (1, 2)]
    assert all(r["errors"] == 0 and r["x_realtime"] > 0 for r in rows)
    assert all(len(r["rounds"]) == 2 for r in rows)
    streams = [r for r in rows if r["op"] == "stream"]
    assert all(r["first_ms"] is not None and r["lag_p99_ms"] > 0 for r in streams)
    assert all(0 <= r["added_p99_ms"] < r["first_ms"] for r in streams)  # the first window's columns come first
    out = capsys.readouterr().out
    assert "first ms" in out and "compute factor" in out


def test_stream_settings_benchmark_compares_settings_with_offline_decoding(real_clip_paths, capsys):
    from benchmarks import stream_settings

    report = stream_settings.main(["--clips", str(real_clip_paths["speech"]), "--settings", "1.0:0.1,0.25:0.4",
                                   "--threads", "1"])
    rows = {row["setting"]: row for row in report["rows"]}
    assert set(rows) == {"offline", "1.0:0.1", "0.25:0.4"}
    assert rows["1.0:0.1"]["factor"] > 3 * rows["0.25:0.4"]["factor"]  # 28/2 against 18/9
    assert all(0 < row["snr"] < 60 for name, row in rows.items() if name != "offline")  # approximate, not exact
    assert rows["offline"]["mel_vs_offline"] == 0 and all(row["mel_vs_input"] > 0 for row in rows.values())


def test_stream_settings_benchmark_measures_stream_encoding_agreement(real_clip_paths, capsys):
    from benchmarks import stream_settings

    report = stream_settings.main(["--clips", str(real_clip_paths["speech"]), "--settings", "1.0:0.1,0.5:0.4",
                                   "--threads", "1", "--encode"])
    rows = {row["setting"]: row for row in report["rows"]}
    assert set(rows) == {"1.0:0.1", "0.5:0.4"} and rows["0.5:0.4"]["columns"][1] == 9
    assert all(0.2 < row["tokens"] < 1 and row["lowest"] == row["tokens"] for row in rows.values())  # one clip
    assert "tokens equal to offline" in capsys.readouterr().out
