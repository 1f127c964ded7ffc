"""Decoding through the log-mel: a decode graph that gives the log-mel, finished by ``MelInverter``.

A model with the ``mel_inversion`` vocoder head (``meltok.vocoder``) has no neural vocoder: its
decoder graph maps tokens ``[B, rows, w]`` to the log-mel ``[B, n_mels, c w]`` and the runtime turns
that into audio ``[B, (c w - 1) hop]`` with ``mel_inversion.MelInverter`` (numpy). The inverter's
running phase is state carried from window to window and through streams: ``MelDecode`` is the
``windowing.StatefulDecode`` that ``WindowedDecoder`` threads (the state at a window's first column is
the running phase after the frame before it). A bundle says which kind its decoder is in its
manifest (``decoder_output``, ``mel_inversion``: the inverter's parameters).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from meltok_runtime.errors import BundleError
from meltok_runtime.mel_inversion import CONSISTENCY_ITERATIONS, NNLS_ITERATIONS, MelInverter

DECODER_OUTPUTS = ("audio", "log_mel")  # what a decoder graph gives (the manifest's ``decoder_output``)
INVERTER_PARAMETERS = ("sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max", "log_floor",
                       "nnls_iterations", "consistency_iterations")
_MAY_BE_ZERO = ("f_min", "consistency_iterations")


def inverter_parameters(*, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, f_min: float, f_max: float,
                        log_floor: float, nnls_iterations: int = NNLS_ITERATIONS,
                        consistency_iterations: int = CONSISTENCY_ITERATIONS) -> dict:
    """The parameters a manifest records (``mel_inversion``): the front end's, and the iterations
    (default: ``MelInverter``'s)."""
    return {"sample_rate": int(sample_rate), "n_fft": int(n_fft), "hop_length": int(hop_length),
            "n_mels": int(n_mels), "f_min": float(f_min), "f_max": float(f_max), "log_floor": float(log_floor),
            "nnls_iterations": int(nnls_iterations), "consistency_iterations": int(consistency_iterations)}


def check_inverter_parameters(parameters, source: str = "manifest") -> None:
    """BundleError unless ``parameters`` (a manifest's ``mel_inversion``) has exactly the inverter's keys,
    each a finite number (whole where it must be) of the right sign."""
    keys = set(parameters) if isinstance(parameters, dict) else set()
    if not isinstance(parameters, dict) or keys != set(INVERTER_PARAMETERS):
        raise BundleError(f"{source}'s mel_inversion has keys {sorted(keys)}; expected {list(INVERTER_PARAMETERS)}: "
                          "re-export the bundle (or upgrade meltok)")
    for key, value in parameters.items():
        whole = key not in ("f_min", "f_max", "log_floor")
        number = isinstance(value, int if whole else (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or value < 0 or (value == 0 and key not in _MAY_BE_ZERO):
            raise BundleError(f"{source}'s mel_inversion has {key} = {value!r}; expected a "
                              f"{'positive whole' if whole else 'non-negative'} number: re-export the bundle")


def inverter_from_parameters(parameters: dict, source: str = "manifest") -> MelInverter:
    """A ``MelInverter`` from a manifest's ``mel_inversion`` (checked: ``check_inverter_parameters``)."""
    check_inverter_parameters(parameters, source)
    return MelInverter(**parameters)


class MelDecode:
    """``windowing.StatefulDecode`` over ``mel_graph`` (tokens ``[B, rows, w]`` -> log-mel
    ``[B, n_mels, c w]``) and ``inverter``: audio ``[B, (c w - 1) hop]`` float32; the state is the
    running phase ``[B, F]`` float64 (``F = n_fft // 2 + 1``) after the frame before the window."""

    def __init__(self, mel_graph: Callable[[np.ndarray], np.ndarray], inverter: MelInverter, compression: int):
        self.mel_graph, self.inverter, self.compression = mel_graph, inverter, compression

    def initial_state(self, batch: int) -> np.ndarray:
        """Zeros: the running phase at the start of a stream."""
        return np.zeros((batch, self.inverter.bins), dtype=np.float64)

    def __call__(self, tokens: np.ndarray, state: np.ndarray | None, carry: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens ``[B, rows, w]`` and the running phase before the window's first frame -> (audio, the
        running phase before the frame of column ``carry``; the last frame's where ``carry`` is past the end)."""
        log_mel = np.asarray(self.mel_graph(tokens), dtype=np.float32)
        audio, running = self.inverter(log_mel, state)
        frame = min(self.compression * carry, running.shape[-1]) - 1
        if frame < 0:
            return audio, self.initial_state(tokens.shape[0]) if state is None else np.array(state, dtype=np.float64)
        return audio, np.array(running[..., frame])
