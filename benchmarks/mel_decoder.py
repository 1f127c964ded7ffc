"""Where a log-mel decoder loses level and pitch: its decoded log-mel against the input's own, before any
vocoder.

For a model whose decoder gives the log-mel (a ``mel_inversion`` model file, a stage-1 run or one of its
checkpoint folders; a stage-2 model's decoder gives vocoder features, and only the table's token shares
then mean anything), three tables, from generated tones and real clips:

- ``tone level``: pure tones at 300/1000/4000 Hz and -6/-26/-46 dBFS (3 s): the tone's mel band in the
  input's log-mel and in the decoded one (natural log of the mel magnitude, median over the steady
  frames), and their difference. A decoder that flattens peaks returns loud tones too low;
- ``tone frequency``: tones from 100 Hz to 6 kHz at -6 dBFS: the frequency ``MelInverter`` reads from the
  input's log-mel and from the decoded one (the peak fit of its strongest bin in the middle frame), error
  in % of the tone's frequency. The inverter keeps a tone only when the decoded mel places it;
- ``gain``: real clips (``--clips``) scaled by 0/-10/-20/-30 dB, encoded, decoded and inverted: the output
  level re the scaled input (``meltok.metrics.level_difference_db``), and the share of tokens unlike those
  of the clip at 0 dB. Tokens that change with the gain carry the level; an output level that still
  depends on the gain means the decoder does not follow it.

    python -m benchmarks.mel_decoder .runs/candidate/lvl-8000.safetensors --clips tests/data/music.flac
"""
from __future__ import annotations

import argparse

import numpy as np

TONE_LEVEL_HZ = (300.0, 1000.0, 4000.0)
TONE_LEVEL_DBFS = (-6.0, -26.0, -46.0)
TONE_FREQUENCIES = tuple(float(f) for f in np.geomspace(100.0, 6000.0, 16))
GAINS_DB = (0.0, -10.0, -20.0, -30.0)
SAMPLE_RATE = 44100


def tone(frequency: float, dbfs: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (10 ** (dbfs / 20) * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def log_mels(model, audio: np.ndarray, tokens_out: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``audio [N]`` -> (the input's log-mel, the decoded log-mel of its tokens), both ``[M, T]`` float64;
    the tokens ``[rows, T']`` are appended to ``tokens_out`` if given."""
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(audio))[None]
        tokens = model.tokenize(x)
        decoded = model.decode_features(model.quantizer.lookup(tokens))[0].double().numpy()
        true = model.log_mel(x)[0].double().numpy()
    if tokens_out is not None:
        tokens_out.append(tokens[0].numpy())
    frames = min(true.shape[-1], decoded.shape[-1])
    return true[:, :frames], decoded[:, :frames]


def tone_level_rows(model, seconds: float) -> list[tuple]:
    rows = []
    for frequency in TONE_LEVEL_HZ:
        for dbfs in TONE_LEVEL_DBFS:
            true, decoded = log_mels(model, tone(frequency, dbfs, seconds))
            steady = slice(20, -20)  # frames away from the edges
            band = int(np.argmax(np.median(true[:, steady], axis=1)))
            rows.append((frequency, dbfs, band, float(np.median(true[band, steady])),
                         float(np.median(decoded[band, steady]))))
    return rows


def read_frequency(inverter, log_mel: np.ndarray) -> float:
    """The frequency (Hz) ``inverter`` gives the strongest bin of the middle frame of ``log_mel [M, T]``."""
    mel = inverter.linear_mel(log_mel[None])
    magnitude = inverter.magnitude(mel)
    advance, _ = inverter.frame_advance(magnitude, mel)
    middle = magnitude.shape[-1] // 2
    strongest = int(np.argmax(magnitude[0, :, middle]))
    return float(advance[0, strongest, middle] / (2 * np.pi * inverter.hop) * SAMPLE_RATE)


def tone_frequency_rows(model, inverter, seconds: float) -> list[tuple]:
    rows = []
    for frequency in TONE_FREQUENCIES:
        true, decoded = log_mels(model, tone(frequency, -6.0, seconds))
        rows.append((frequency, 100 * (read_frequency(inverter, true) / frequency - 1),
                     100 * (read_frequency(inverter, decoded) / frequency - 1)))
    return rows


def gain_rows(model, inverter, clips: list[str], seconds: float) -> list[tuple]:
    from meltok import metrics
    from meltok.evaluation.inputs import load_clip

    rows = []
    for path in clips:
        audio = load_clip(path, seconds)
        levels, tokens = [], []
        for gain in GAINS_DB:
            scaled = (audio * 10 ** (gain / 20)).astype(np.float32)
            _, decoded = log_mels(model, scaled, tokens)
            output = inverter(decoded[None])[0][0]
            levels.append(metrics.level_difference_db(scaled[:output.size], output))
        changed = [float(np.mean(t != tokens[0])) for t in tokens]
        rows.append((path, levels, changed))
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="A mel_inversion model file, a stage-1 run or a checkpoint folder.")
    parser.add_argument("--clips", nargs="*", default=["tests/data/music.flac", "tests/data/speech.flac"],
                        help="Real clips for the gain table.")
    parser.add_argument("--seconds", type=float, default=3.0, help="Seconds of each tone and clip.")
    args = parser.parse_args(argv)
    import torch

    from meltok import MelTok
    from meltok.vocoder import MelInversionHead

    torch.set_num_threads(1)
    model = MelTok.load(args.model).eval()
    inverter = model.mel_inverter or MelInversionHead(model.config.frontend).inverter  # a stage-1 run's model
    levels = tone_level_rows(model, args.seconds)
    print(f"{'tone Hz':>8} {'dBFS':>6} {'band':>5} {'input':>7} {'decoded':>8} {'diff':>6}   (log-mel, nats)")
    print("-" * 48)
    for frequency, dbfs, band, true, decoded in levels:
        print(f"{frequency:8.0f} {dbfs:6.0f} {band:5d} {true:7.2f} {decoded:8.2f} {decoded - true:+6.2f}")
    frequencies = tone_frequency_rows(model, inverter, args.seconds)
    print(f"\n{'tone Hz':>8} {'from input %':>13} {'from decoded %':>15}   (frequency the inverter reads)")
    print("-" * 40)
    for frequency, from_true, from_decoded in frequencies:
        print(f"{frequency:8.1f} {from_true:+13.2f} {from_decoded:+15.2f}")
    medians = [float(np.median(np.abs([row[i] for row in frequencies]))) for i in (1, 2)]
    print(f"{'median |error|':>8} {medians[0]:12.2f}% {medians[1]:14.2f}%")
    gains = gain_rows(model, inverter, args.clips, args.seconds)
    print("\n" + f"{'clip':32s}" + "".join(f" {f'{g:+.0f} dB in':>10}" for g in GAINS_DB)
          + "   (output level re input, dB; tokens unlike those at 0 dB, %)")
    print("-" * (32 + 11 * len(GAINS_DB)))
    for path, outputs, changed in gains:
        print(f"{path[-32:]:32s}" + "".join(f" {value:+10.1f}" for value in outputs))
        print(f"{'':32s}" + "".join(f" {100 * value:9.0f}%" for value in changed))
    return {"tone_level": levels, "tone_frequency": frequencies, "frequency_error_median": medians, "gain": gains}


if __name__ == "__main__":
    main()
