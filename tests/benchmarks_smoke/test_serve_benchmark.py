"""Smoke test of ``benchmarks/serve.py`` at a tiny size: a real server, every mode and operation once."""
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("uvicorn")


def test_serve_benchmark_prints_a_row_per_mode_operation_and_client_count(capsys):
    from benchmarks import serve

    report = serve.main(["--clients", "1,2", "--seconds", "1", "--requests", "1", "--threads", "1",
                         "--modes", "batched,inproc", "--ops", "encode,decode,stream"])
    rows = report["rows"]
    assert [(r["mode"], r["op"], r["clients"]) for r in rows] == [
        ("batched", op, n) for op in ("encode", "decode", "stream") for n in (1, 2)] + [
        ("inproc", op, n) for op in ("encode", "decode") for n in (1, 2)]
    assert all(r["errors"] == 0 and r["x_realtime"] > 0 for r in rows)
    assert all(r["first_ms"] is not None for r in rows if r["op"] == "stream")
    assert "first ms" in capsys.readouterr().out
