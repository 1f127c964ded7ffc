"""Calibration inputs of the int8 quantizer: real audio at several levels, and the model's tokens of it.

Crops of the export verification clip (``export/assets/verify.flac``) at 0, -20 and -40 dB and one crop
ending in digital silence, so that the activation ranges cover quiet passages; the decoder is calibrated
on the tokens the float32 model gives for them.
"""
from __future__ import annotations

import numpy as np

from meltok_runtime.lengths import padded_length

from .contract import verify_audio

CALIBRATION_CROPS = 4
CALIBRATION_SECONDS = 2.0
CALIBRATION_GAINS = (1.0, 0.1, 0.01)  # 0, -20, -40 dB, in turn over the crops


def calibration_audio(sample_rate: int, hop: int, compression: int, clip: np.ndarray | None = None, *,
                      crops: int = CALIBRATION_CROPS, seconds: float = CALIBRATION_SECONDS) -> list[np.ndarray]:
    """Calibration inputs ``[1, samples]`` float32: ``crops`` crops of ``clip`` (default: the verification
    clip) spread over it, at the levels of ``CALIBRATION_GAINS`` in turn, and one crop whose second half is
    digital silence (the log-mel floor). Each is padded as the runtime pads."""
    if clip is None:
        clip = verify_audio(sample_rate)
    clip = np.asarray(clip, dtype=np.float32)
    length = min(padded_length(int(seconds * sample_rate), hop, compression),
                 padded_length(clip.shape[0], hop, compression))
    clip = np.pad(clip, (0, max(0, length - clip.shape[0])))
    offsets = np.linspace(0, clip.shape[0] - length, crops).astype(int)
    audio = [CALIBRATION_GAINS[i % len(CALIBRATION_GAINS)] * clip[o:o + length] for i, o in enumerate(offsets)]
    silent = clip[offsets[-1]:offsets[-1] + length].copy()
    silent[length // 2:] = 0.0
    audio.append(silent)
    return [np.ascontiguousarray(a[None], dtype=np.float32) for a in audio]


class FeedReader:
    """A ``CalibrationDataReader`` over a list of feed dicts."""

    def __init__(self, feeds: list[dict]):
        self.feeds, self._next = feeds, iter(feeds)

    def get_next(self):
        return next(self._next, None)

    def __len__(self):
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int):
        self._next = iter(self.feeds[start_index:end_index])


def calibration_feeds(model, audio: list[np.ndarray] | None = None) -> dict[str, list[dict]]:
    """Feeds of both graphs: the audio for the encoder, the float32 model's tokens of it for the decoder."""
    import torch

    if audio is None:
        audio = calibration_audio(model.sample_rate, model.hop_length, model.config.tokenizer.compression)
    with torch.inference_mode():
        tokens = [model.tokenize(torch.from_numpy(a)).numpy().astype(np.int32) for a in audio]
    return {"encoder": [{"audio": a} for a in audio], "decoder": [{"tokens": t} for t in tokens]}
