"""Why TF32 is off in every TensorRT build and ONNX Runtime CUDA session, emulated on the CPU.

On Ampere and later GPUs, TF32 rounds the operands of float32 matrix products and convolutions to a
10-bit mantissa. ``tf32_emulation`` does that rounding to every float32 product the model runs: the 1D
convolutions and matrix products of the islands (STFT, mel and VQ-distance products, the head, the
ISTFT) and the tokenizer's bulk, its ``conv2d`` layers and the ``bmm`` products of its attention
(``test_the_emulation_covers_every_product_the_model_runs`` holds the list to what the model calls). In
the fp16 graph (``precision_variant(model, "fp16")``) only the float32 islands are still float32, so
only they are rounded. With the rounding, the fp16 tokens fall under the export's floor
(``FP16_TOKEN_FLOOR``) on real audio, for the tiny preset and for the shipped model, and the float32
graph's tokens drift as far; without it they stay above it. This is a CPU emulation of TF32's
rounding, the evidence for the precision contract; no GPU ran it.
"""
import contextlib

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from meltok import MelTok
from meltok.default_model import DEFAULT_MODEL
from meltok_export.onnx_export import precision_variant
from meltok_export.contract import FP16_TOKEN_FLOOR
from meltok_runtime.lengths import padded_length

from ..runtime.conftest import DATA

FLOAT32_PRODUCTS = {F.conv1d, F.conv_transpose1d, F.conv2d, F.conv_transpose2d, F.linear, torch.matmul,
                    torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm, torch.baddbmm, torch.mm, torch.addmm,
                    torch.einsum}
PRODUCT_NAMES = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "linear", "matmul",
                 "__matmul__", "bmm", "baddbmm", "mm", "addmm", "einsum", "scaled_dot_product_attention", "tensordot"}
CLIPS = ("music.flac", "speech.flac", "effects.flac")
SECONDS = 2.0


def round_to_tf32(value):
    """A float32 tensor with its mantissa rounded to TF32's 10 bits (round to nearest); others unchanged."""
    if not isinstance(value, torch.Tensor) or value.dtype != torch.float32:
        return value
    bits = value.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


class tf32_emulation(TorchFunctionMode):
    """Within the block, every float32 product or convolution reads TF32-rounded operands."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in FLOAT32_PRODUCTS:
            args = tuple(round_to_tf32(arg) for arg in args)
        return func(*args, **(kwargs or {}))


class _record_calls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls.add(func)
        return func(*args, **(kwargs or {}))


def test_the_emulation_covers_every_product_the_model_runs():
    """Every matrix product or convolution the model calls on float32 data is TF32-rounded by the emulation,
    the tokenizer's conv2d and attention bmm included (they are most of its FLOPs)."""
    model = _tiny()
    audio = _clips(model.sample_rate, model.hop_length, model.config.tokenizer.compression)[:1]
    with torch.inference_mode(), _record_calls() as recorder:
        model.detokenize(model.tokenize(audio))
    products = {func for func in recorder.calls if getattr(func, "__name__", "") in PRODUCT_NAMES}
    assert {F.conv2d, torch.bmm} <= products  # the tokenizer's bulk: 2D convolutions and attention
    assert products <= FLOAT32_PRODUCTS, products - FLOAT32_PRODUCTS


def test_rounding_keeps_ten_mantissa_bits():
    values = torch.tensor([1.0 + 2 ** -10, 1.0 + 2 ** -11 + 2 ** -12, 1.0 + 2 ** -12, -3.0e-8], dtype=torch.float32)
    rounded = round_to_tf32(values)
    assert rounded.tolist()[:3] == [1.0 + 2 ** -10, 1.0 + 2 ** -10, 1.0]
    assert abs(rounded[3] / values[3] - 1) <= 2 ** -11
    assert round_to_tf32(values.half()).dtype == torch.float16  # float16 operands are not TF32's business


def _clips(sample_rate: int, hop: int, compression: int) -> torch.Tensor:
    """The first ``SECONDS`` of each clip, mono: ``[len(CLIPS), samples]`` (items of a batch are independent)."""
    length = padded_length(int(SECONDS * sample_rate), hop, compression)
    clips = []
    for name in CLIPS:
        audio, rate = soundfile.read(DATA / name, dtype="float32", always_2d=True)
        assert rate == sample_rate
        clips.append(audio.mean(axis=1)[:length])
    return torch.from_numpy(np.stack(clips))


def _tokens(model, clips, emulate: bool = False) -> np.ndarray:
    with torch.inference_mode(), tf32_emulation() if emulate else contextlib.nullcontext():
        return model.tokenize(clips).numpy()


def _tiny():
    torch.manual_seed(0)
    model = MelTok.from_config("tiny")
    with torch.no_grad():
        model.quantizer.embedding.weight.normal_(0, 0.5)
    return model.eval()


@pytest.mark.parametrize("which", ["tiny", "shipped"])
def test_fp16_tokens_need_tf32_off(which):
    if which == "shipped" and not DEFAULT_MODEL.is_file():
        pytest.skip("this install has no shipped model")
    model = _tiny() if which == "tiny" else MelTok.load(DEFAULT_MODEL).eval()
    clips = _clips(model.sample_rate, model.hop_length, model.config.tokenizer.compression)
    reference, half = _tokens(model, clips), precision_variant(model, "fp16")
    without = np.mean(_tokens(half, clips) == reference)
    with_tf32 = np.mean(_tokens(half, clips, emulate=True) == reference)
    print(f"{which}: fp16 token agreement {without:.4f} with TF32 off, {with_tf32:.4f} with TF32 emulated")
    assert without >= FP16_TOKEN_FLOOR > with_tf32, (without, with_tf32)
    if which == "tiny":  # the float32 graph with TF32 (ort-cuda's default) drifts as far from the CPU's tokens
        fp32_tf32 = np.mean(_tokens(model, clips, emulate=True) == reference)
        print(f"{which}: fp32 token agreement {fp32_tf32:.4f} with TF32 emulated")
        assert fp32_tf32 < FP16_TOKEN_FLOOR
