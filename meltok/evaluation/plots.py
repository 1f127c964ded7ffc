"""PNG plots of original vs reconstructed log-mel spectrograms (matplotlib, optional)."""
from __future__ import annotations

import re

from meltok_runtime.io.atomic import atomic_output
from meltok_runtime.optional import import_optional

from .. import metrics


def require_matplotlib():
    """matplotlib, or a MissingDependencyError saying how to install it."""
    return import_optional("matplotlib", install="pip install matplotlib (or pip install -e '.[train]')",
                           purpose="plots (leave out the plot folder to skip them)")


def safe_name(relative: str) -> str:
    """A clip's relative path as a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", relative)[:120]


def keep_for_plots(plotted: list, limit: int) -> list:
    """Of ``(ClipResult, reference, estimate)`` items: the first clip of each category, then
    further clips in order, at most ``limit``."""
    firsts, rest, seen = [], [], set()
    for item in plotted:
        (rest if item[0].category in seen else firsts).append(item)
        seen.add(item[0].category)
    return (firsts + rest)[:max(0, limit)]


def plot_clip(path, reference, estimate, *, title: str = "", sample_rate: int = metrics.SAMPLE_RATE) -> None:
    """Write a PNG of the reference and estimate log-mel spectrograms (same colour scale)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    mels = [metrics.log_mel_spectrogram(x) for x in (reference, estimate)]
    seconds = len(reference) / sample_rate
    vmax = float(mels[0].max())
    figure = Figure(figsize=(9, 5.5), dpi=80, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 1, sharex=True)
    for axis, mel, label in zip(axes, mels, ("original", "reconstructed")):
        image = axis.imshow(mel, origin="lower", aspect="auto", cmap="magma", vmin=vmax - 5.0, vmax=vmax,
                            extent=(0.0, seconds, 0, mel.shape[0]))
        axis.set_ylabel(f"{label}\nmel band (of {mel.shape[0]})")
        figure.colorbar(image, ax=axis, label="log10 magnitude")
    axes[-1].set_xlabel("time (s)")
    if title:
        figure.suptitle(title)
    with atomic_output(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png")
