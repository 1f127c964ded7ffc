"""Quality evaluation of a codec on a folder of audio: per-clip metrics, per-category summaries,
a printed table, JSON/CSV reports, spectrogram plots, and classic codecs scored beside it.

>>> report = evaluate(MelTok.load("model.safetensors"), "audio/", plot_dir="plots/")
>>> print(report.table())
>>> report.write("results/eval")          # results/eval.json, results/eval.csv

Modules: ``inputs`` (finding clips, categories, opening a codec), ``run`` (encode, decode and
score), ``report`` (summaries, table, JSON/CSV), ``plots`` (PNG spectrograms), ``anchors``
(Opus, Vorbis, MP3 and a mel + Griffin-Lim reference on the same clips).
"""
from .report import ClipResult, Report, summarize
from .run import evaluate

__all__ = ["ClipResult", "Report", "evaluate", "summarize"]
