"""Smoke test of benchmarks/streaming.py: one run on the time-local tiny preset (timings not asserted;
its streams must reproduce offline results, which the benchmark reports as exact)."""
import json

import pytest

from .test_benchmarks_smoke import table_lines

pytest.importorskip("torch")


def test_streaming_main_measures_both_directions(tmp_path, capsys):
    from benchmarks import streaming
    out_json = tmp_path / "streaming.json"
    report = streaming.main(["--models", "tiny-local", "--lookaheads", "0.1", "--pushes", "8", "--seconds", "1",
                             "--threads", "1", "--json", str(out_json)])
    rows = table_lines(capsys.readouterr().out, "op")
    assert [row.split()[0] for row in rows] == ["decode", "encode"]
    assert all("(exact)" in row for row in rows)
    written = json.loads(out_json.read_text())
    assert written == json.loads(json.dumps(report))
    measured = written["models"]["tiny-local"]["rows"]
    assert {r["op"] for r in measured} == {"decode", "encode"}
    assert all(r["exact"] and r["first_ms"] > 0 and r["x_real_time"] > 0 for r in measured)
