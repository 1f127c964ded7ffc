"""Smoke test of ``benchmarks/corpus.py``: the loop and one-worker modes on two real clips (figures not asserted)."""
import json
from pathlib import Path

import pytest

from .test_benchmarks_smoke import table_lines

pytest.importorskip("pyarrow")


def test_corpus_main_compares_the_loop_and_the_job_on_real_clips(tmp_path, capsys):
    data = Path(__file__).resolve().parents[1] / "data"
    from benchmarks import corpus
    report = corpus.main([str(data), "--minutes", "0.1", "--modes", "loop,workers-1", "--json",
                          str(tmp_path / "corpus.json")])
    rows = table_lines(capsys.readouterr().out, "mode")
    assert [row.split()[0] for row in rows] == ["loop", "workers-1"]
    assert rows[1].split()[-1] == "yes"  # the dataset holds the loop's tokens
    assert report["files"] == 2 and json.loads((tmp_path / "corpus.json").read_text())["modes"]["workers-1"][
        "tokens_equal_loop"]
    assert all(mode["wall"] > 0 and mode["peak_rss_mb"] > 0 for mode in report["modes"].values())
