"""Length rules shared by the torch model and the runtime (numpy only).

With hop ``h`` and total compression ``c`` (8 for the paper layout), ``N`` samples give
``T = N // h + 1`` mel frames and ``T'`` token columns (ceil for the Haar patching, floor for
each stride-2 stage); ``T'`` columns decode to ``(c * T' - 1) * h`` samples.
"""
import math

import numpy as np

from meltok_runtime.errors import CodeRangeError, ModelMismatchError, TokenInputError


def token_columns(num_samples: int, hop_length: int, compression: int) -> int:
    """Token columns ``T'`` the reference tokenizer produces for ``num_samples`` samples."""
    frames = num_samples // hop_length + 1
    columns = math.ceil(frames / 2)
    for _ in range(int(math.log2(compression)) - 1):
        columns //= 2
    return columns


def decoded_length(columns: int, hop_length: int, compression: int) -> int:
    """Samples decoded from ``columns`` token columns."""
    return (compression * columns - 1) * hop_length


def padded_length(num_samples: int, hop_length: int, compression: int, *, pad: bool = True) -> int:
    """Length to zero-pad ``num_samples`` to before encoding.

    With ``pad`` the result is the shortest length whose decoded audio covers every input
    sample (it equals its own decoded length); without, only audio shorter than one token
    column is padded.
    """
    if pad:
        columns = max(1, math.ceil((num_samples + hop_length) / (compression * hop_length)))
        return decoded_length(columns, hop_length, compression)
    return max(num_samples, decoded_length(1, hop_length, compression))


def check_tokens(tokens, rows: int, codebook_size: int) -> np.ndarray:
    """Validate a token array; returns int64 ``[B, rows, T']`` (``[rows, T']`` gets B = 1)."""
    array = np.asarray(tokens)
    if array.dtype.kind not in "iu":
        raise TokenInputError(f"tokens must be an integer array, got dtype {array.dtype}; "
                              "pass the int array that encode() returned")
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise TokenInputError(f"tokens must have shape [B, {rows}, T'] or [{rows}, T'], got {list(array.shape)}")
    if array.shape[1] != rows:
        raise ModelMismatchError(
            f"tokens have {array.shape[1]} rows but this model uses {rows}; decode with the model that encoded them")
    if array.shape[2] < 1 or array.shape[0] < 1:
        raise TokenInputError(f"tokens are empty (shape {list(array.shape)}); need at least one column")
    if array.size and (array.min() < 0 or array.max() >= codebook_size):
        bad = np.argwhere((array < 0) | (array >= codebook_size))[0]
        raise CodeRangeError(f"token {int(array[tuple(bad)])} at position {bad.tolist()} is outside the codebook "
                             f"[0, {codebook_size}); the tokens are corrupt or from another model")
    return array.astype(np.int64, copy=False)
