"""PNG plots of original vs reconstructed spectrograms: log-mel, or linear-frequency STFT beside each
other to see pitch and combs (matplotlib, optional)."""
from __future__ import annotations

import io
import re

import numpy as np

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


def plot_spectrograms(path, reference, estimate, *, title: str = "", max_hz: float = 8000.0, n_fft: int = 4096,
                      hop_length: int = 512, sample_rate: int = metrics.SAMPLE_RATE, range_db: float = 80.0) -> None:
    """Write a PNG of the reference (left) and estimate (right) STFT power in dB, 0 to ``max_hz`` on a
    linear frequency axis (``n_fft`` 4096: 10.8 Hz bins, fine enough to show a comb at 86 Hz), one colour
    scale: ``range_db`` below the reference's maximum."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = int(max_hz * n_fft / sample_rate) + 1
    powers = [20.0 * np.log10(np.maximum(metrics.stft_magnitude(x, n_fft, hop_length)[:rows], 1e-10))
              for x in (reference, estimate)]
    vmax = float(powers[0].max())
    seconds = len(reference) / sample_rate
    figure = Figure(figsize=(11, 4.5), dpi=80, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2, sharey=True)
    for axis, power, label in zip(axes, powers, ("input", "output")):
        image = axis.imshow(power, origin="lower", aspect="auto", cmap="magma", vmin=vmax - range_db, vmax=vmax,
                            extent=(0.0, seconds, 0.0, rows * sample_rate / n_fft), interpolation="antialiased")
        axis.set_title(label)
        axis.set_xlabel("time (s)")
    axes[0].set_ylabel("frequency (Hz)")
    figure.colorbar(image, ax=axes, label="dB")
    if title:
        figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    from PIL import Image  # matplotlib's own dependency

    with atomic_output(path, suffix=".png") as tmp:  # 256 colours: a fraction of the size, same look
        Image.open(buffer).convert("RGB").quantize(256).save(tmp, format="png", optimize=True)
