"""Evaluation results: per-clip values, per-category summaries, the printed table and the
JSON/CSV files."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from meltok_runtime.io.atomic import atomic_output

from .. import metrics

SAMPLE_RATE = metrics.SAMPLE_RATE
CATEGORIES = ("music", "speech", "effects")
ALL = "all"
METRICS = metrics.CORE_METRICS + metrics.OPTIONAL_METRICS + ("kbps", "codebook_usage", "perplexity")
# table columns: (metric, header, format)
COLUMNS = (("mel_distance", "mel", "{:.3f}"), ("mel_distance_p1", "mel_p1", "{:.3f}"),
           ("stft_distance", "stft", "{:.3f}"), ("lsd", "lsd", "{:.3f}"), ("si_sdr", "si_sdr", "{:.2f}"),
           ("buzz_db", "buzz_dB", "{:+.1f}"), ("level_db", "level_dB", "{:+.2f}"), ("visqol", "visqol", "{:.2f}"),
           ("pesq_wb", "pesq_wb", "{:.2f}"), ("stoi", "stoi", "{:.3f}"), ("kbps", "kbps", "{:.2f}"),
           ("codebook_usage", "usage*", "{:.3f}"), ("perplexity", "ppl*", "{:.0f}"))
POOLED = ("codebook_usage", "perplexity")
DEFINITIONS = {
    "mel_distance": "DAC multi-scale mel distance with DAC's class defaults (power 2 + magnitude term): windows "
                    "32..2048 (hop w/4, hann, centred), slaney mels 5..320, sum over scales of "
                    "L1(log10(clamp(mel,1e-5)^2)) + L1(mel); lower is better",
    "mel_distance_p1": "DAC multi-scale mel distance as DAC trains with it (conf/base.yml: power 1, no magnitude "
                       "term): sum over the same 7 scales of L1(log10(clamp(mel,1e-5))); lower is better",
    "stft_distance": "multi-resolution STFT (auraloss defaults: fft 1024/2048/512, hop 120/240/50, win "
                     "600/1200/240): spectral convergence + L1 of ln magnitude, mean over resolutions",
    "lsd": "log-spectral distance: n_fft 2048, hop 512, hann; mean over frames of sqrt(mean over bins of "
           "(log10 P_ref - log10 P_est)^2), P = |X|^2 clamped at 1e-8",
    "si_sdr": "scale-invariant SDR in dB (zero-mean)",
    "buzz_db": "frame-rate buzz, output minus input: median over the multiples of 44100/256 = 172.3 Hz of the "
               "Welch power spectrum's peak (+-4 Hz) over its median within +-60 Hz (+-10 Hz left out), in dB",
    "level_db": "RMS level difference in dB, 20 log10(rms(output) / rms(input))",
    "visqol": "ViSQOL v3 audio mode (visqol-python) at 48 kHz, MOS-LQO",
    "pesq_wb": "wide-band PESQ at 16 kHz (speech clips only)",
    "stoi": "STOI (pystoi; speech clips only)",
    "kbps": "bitrate: bits of the coded form / clip seconds (tokens x log2(codebook size), or an anchor "
            "codec's file size)",
    "codebook_usage": "distinct codes / codebook size (summary rows: pooled over the clips)",
    "perplexity": "exp(entropy) of the code histogram (summary rows: pooled over the clips)",
}


@dataclasses.dataclass
class ClipResult:
    """Metrics of one clip: ``values`` maps each name of ``METRICS`` to a float or None."""

    path: str
    category: str
    seconds: float
    codec_seconds: float
    values: dict
    notes: dict = dataclasses.field(default_factory=dict)  # metric -> why it is None for this clip
    histogram: np.ndarray | None = dataclasses.field(default=None, repr=False)

    def row(self) -> dict:
        return {"path": self.path, "category": self.category, "seconds": round(self.seconds, 3),
                "codec_seconds": round(self.codec_seconds, 3), **{m: self.values.get(m) for m in METRICS},
                "notes": "; ".join(f"{m}: {why}" for m, why in self.notes.items())}


@dataclasses.dataclass
class Report:
    """Per-clip results, per-category summaries (``summary[category][metric] = {"mean", "median",
    "min", "max", "n"}``, codebook metrics also ``"pooled"``; ``all`` pools every clip) and why
    optional metrics could not run here (``unavailable``)."""

    model: str
    audio_dir: str
    codebook_size: int | None
    clips: list
    summary: dict
    unavailable: dict

    def table(self) -> str:
        """Plain-text table: one mean and one median row per category, then ``all``."""
        header = ["category", "stat", "clips", "seconds"] + [name for _, name, _ in COLUMNS]
        rows = []
        for category, stats in self.summary.items():
            for stat in ("mean", "median"):
                cells = [category if stat == "mean" else "", stat, str(stats["clips"]) if stat == "mean" else "",
                         f"{stats['seconds']:.1f}" if stat == "mean" else ""]
                for metric, _, fmt in COLUMNS:
                    if metric in POOLED:  # one pooled figure per category, on the mean row
                        value = stats[metric]["pooled"] if stat == "mean" else ""
                    else:
                        value = stats[metric][stat]
                    cells.append(value if value == "" else "-" if value is None else fmt.format(value))
                rows.append(cells)
        lines = format_rows(header, rows, left=2)
        level = self.summary.get(ALL, {}).get("level_db", {})
        notes = ["usage*, ppl*: codebook usage and perplexity of all the codes of the category's clips together"]
        if level.get("n"):
            notes.append(f"level_dB per clip: {level['min']:+.2f} .. {level['max']:+.2f}")
        notes += [f"{metric}: not computed: {reason}" for metric, reason in self.unavailable.items()]
        skipped = sum(1 for clip in self.clips for metric in clip.notes if metric not in self.unavailable)
        if skipped:
            notes.append(f"{skipped} metric value(s) could not be computed for single clips: see the CSV notes column")
        return "\n".join(lines + notes)

    def to_dict(self) -> dict:
        return json_safe({"model": self.model, "audio_dir": self.audio_dir, "sample_rate": SAMPLE_RATE,
                          "codebook_size": self.codebook_size, "definitions": DEFINITIONS,
                          "unavailable": self.unavailable, "summary": self.summary,
                          "clips": [clip.row() for clip in self.clips]})

    def write_json(self, path) -> None:
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    def write_csv(self, path) -> None:
        """One row per clip (metrics as columns; empty cell: not computed)."""
        with atomic_output(path) as tmp:
            with open(tmp, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(self.clips[0].row()) if self.clips else ["path"])
                writer.writeheader()
                for clip in self.clips:
                    writer.writerow({k: "" if v is None else v for k, v in clip.row().items()})

    def write(self, prefix) -> tuple[Path, Path]:
        """Write ``PREFIX.json`` and ``PREFIX.csv`` (a .json/.csv suffix on ``prefix`` is dropped);
        returns both paths."""
        paths = report_paths(prefix)
        self.write_json(paths[0])
        self.write_csv(paths[1])
        return paths


def report_paths(prefix) -> tuple[Path, Path]:
    """``(PREFIX.json, PREFIX.csv)``; a .json or .csv suffix on ``prefix`` is dropped first."""
    prefix = Path(prefix)
    if prefix.suffix.lower() in (".json", ".csv"):
        prefix = prefix.with_suffix("")
    return prefix.with_name(prefix.name + ".json"), prefix.with_name(prefix.name + ".csv")


def format_rows(header: list, rows: list, left: int = 1) -> list[str]:
    """Aligned text lines: the first ``left`` columns left-aligned, the others right-aligned,
    a rule under the header."""
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i < left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _finite(values) -> list:
    return [v for v in values if v is not None and math.isfinite(v)]


def summarize(clips: list) -> dict:
    """``{category: {"clips", "seconds", metric: {"mean", "median", "min", "max", "n"}}}``;
    categories in the order music, speech, effects, others, then ``all``. Statistics skip
    missing and non-finite values (an infinite SI-SDR of a perfect clip, reported only when every
    value is infinite); codebook usage and perplexity also have ``pooled``: computed from all the
    category's codes together."""
    groups = {}
    for clip in clips:
        groups.setdefault(clip.category, []).append(clip)
    order = [c for c in CATEGORIES if c in groups] + sorted(c for c in groups if c not in CATEGORIES)
    summary = {}
    for name, members in [(c, groups[c]) for c in order] + [(ALL, clips)]:
        stats = {"clips": len(members), "seconds": sum(c.seconds for c in members)}
        for metric in METRICS:
            values = [c.values.get(metric) for c in members]
            finite = _finite(values)
            infinite = [v for v in values if v is not None and math.isinf(v)]
            if finite:
                stats[metric] = {"mean": float(np.mean(finite)), "median": float(np.median(finite)),
                                 "min": float(np.min(finite)), "max": float(np.max(finite)), "n": len(finite)}
            elif infinite:
                stats[metric] = {"mean": infinite[0], "median": infinite[0], "min": infinite[0],
                                 "max": infinite[0], "n": len(infinite)}
            else:
                stats[metric] = {"mean": None, "median": None, "min": None, "max": None, "n": 0}
        histograms = [c.histogram for c in members if c.histogram is not None]
        pooled = metrics.usage_from_histogram(np.sum(histograms, axis=0)) if histograms else {}
        for metric in POOLED:
            stats[metric]["pooled"] = pooled.get(metric)
        summary[name] = stats
    return summary


def json_safe(value):
    """``value`` with numpy scalars as Python numbers and non-finite floats as ``"inf"``/``"-inf"``/None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else (None if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, np.integer):
        return int(value)
    return value
