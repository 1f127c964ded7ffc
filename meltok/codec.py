"""The MelTok codec: audio -> tokens ``[B, rows, T']`` -> audio, as one torch module."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from meltok_runtime.audio import prepare_audio
from meltok_runtime.framing import check_tokens, padded_length
from meltok_runtime.streaming import DEFAULT_CONTEXT_SECONDS as STREAM_CONTEXT_SECONDS
from meltok_runtime.streaming import (DEFAULT_FADE_SECONDS, DEFAULT_LOOKAHEAD_SECONDS, StreamDecoder, StreamEncoder,
                                      StreamSpec)
from meltok_runtime.windowing import (DEFAULT_CONTEXT_SECONDS, DEFAULT_WINDOW_SECONDS, decode_windowed,
                                      encode_windowed, seconds_to_columns)

from .config import MelTokConfig, resolve_config
from .frontend import MelFrontend
from .quantizer import VectorQuantizer
from .receptive_field import stream_contract
from .tokenizer import Decoder2d, Encoder2d
from .vocoder import ISTFTHead, VocosBackbone


class MelTok(nn.Module):
    """Mel front end, 2D tokenizer encoder + VQ, and the token vocoder.

    Tensor stages (used by export and training) work on torch tensors; ``encode`` and
    ``decode`` are the user API and accept numpy arrays or tensors.
    """

    def __init__(self, config: MelTokConfig):
        super().__init__()
        self.config = config
        tok = config.tokenizer
        self.frontend = MelFrontend(config.frontend)
        self.encoder = Encoder2d(tok)
        self.quant_conv = nn.Conv2d(tok.z_channels, tok.embedding_dim, 1)
        self.quantizer = VectorQuantizer(tok.codebook_size, tok.embedding_dim)
        self.post_quant_conv = nn.Conv2d(tok.embedding_dim, tok.z_channels, 1)
        self.decoder = Decoder2d(tok)
        self.backbone = VocosBackbone(config.frontend.n_mels, config.vocoder)
        self.head = ISTFTHead(config.vocoder)
        self.model_id = f"{config.name}:untrained"
        self.eval()

    # ----------------------------------------------------------------- contract
    @property
    def sample_rate(self) -> int:
        return self.config.frontend.sample_rate

    @property
    def hop_length(self) -> int:
        return self.config.frontend.hop_length

    @property
    def token_rows(self) -> int:
        return self.config.token_rows

    @property
    def codebook_size(self) -> int:
        return self.config.tokenizer.codebook_size

    @property
    def frame_rate(self) -> float:
        """Mel frames per second."""
        return self.sample_rate / self.hop_length

    @property
    def token_rate(self) -> float:
        """Tokens per second (all rows): about 258 for the paper layout."""
        return self.token_rows * self.frame_rate / self.config.tokenizer.compression

    # ----------------------------------------------------------- tensor stages
    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """``[B, N] -> [B, n_mels, N // hop + 1]`` natural-log mel."""
        return self.frontend(audio)

    def latent(self, mel: torch.Tensor) -> torch.Tensor:
        """``log-mel [B, n_mels, T] -> quantizer input [B, D, rows, T']``."""
        return self.quant_conv(self.encoder(mel[:, None] / self.config.frontend.mel_scale))

    def tokenize(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio [B, N] -> tokens [B, rows, T']`` (int64), no padding (reference behaviour)."""
        return self.quantizer.tokenize(self.latent(self.log_mel(audio)))

    def decode_mel(self, z_q: torch.Tensor) -> torch.Tensor:
        """``codes [B, D, rows, T'] -> log-mel [B, n_mels, c * T']``, clamped at ``ln(log_floor)``."""
        mel = self.decoder(self.post_quant_conv(z_q))[:, 0] * self.config.frontend.mel_scale
        return torch.clamp(mel, min=float(np.log(np.float32(self.config.frontend.log_floor))))

    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """``log-mel [B, n_mels, T] -> audio [B, (T - 1) * hop]``."""
        return self.head(self.backbone(mel))

    def detokenize(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, rows, T'] -> audio [B, (c * T' - 1) * hop]``."""
        return self.vocode(self.decode_mel(self.quantizer.lookup(tokens)))

    # ---------------------------------------------------------------- user API
    def _window_kwargs(self, window_seconds: float, context_seconds: float) -> dict:
        columns = lambda seconds: seconds_to_columns(  # noqa: E731
            seconds, self.sample_rate, self.hop_length, self.config.tokenizer.compression)
        return dict(window_columns=max(1, columns(window_seconds)), context_columns=columns(context_seconds),
                    hop=self.hop_length, compression=self.config.tokenizer.compression)

    @torch.inference_mode()
    def encode(self, audio, sample_rate: int = 44100, *, pad: bool = True,
               window_seconds: float = DEFAULT_WINDOW_SECONDS, context_seconds: float = DEFAULT_CONTEXT_SECONDS):
        """Audio ``[N]``, ``[B, N]`` or ``[B, C, N]`` (numpy or torch) -> tokens ``[B, rows, T']``.

        Other sample rates are resampled, channels are mixed down. With ``pad`` (default) the
        audio is zero-padded at the end so that decoding covers every input sample
        (``decode(tokens, num_samples=N)`` then returns exactly N samples); ``pad=False`` gives
        the reference implementation's tokens exactly. Audio longer than ``window_seconds`` is
        encoded in windows with ``context_seconds`` of context (``meltok_runtime.windowing``, the
        same plan as the runtime), so attention memory stays bounded. Numpy in gives numpy out.
        """
        as_numpy = not isinstance(audio, torch.Tensor)
        array = audio if as_numpy else audio.detach().cpu().numpy()
        batch, _ = prepare_audio(array, sample_rate, self.sample_rate)
        target = padded_length(batch.shape[-1], self.hop_length, self.config.tokenizer.compression, pad=pad)
        batch = np.pad(batch, ((0, 0), (0, target - batch.shape[-1])))
        device = next(self.parameters()).device

        def encode_fn(part: np.ndarray) -> np.ndarray:
            return self.tokenize(torch.from_numpy(part).to(device)).cpu().numpy()

        tokens = encode_windowed(batch, encode_fn, **self._window_kwargs(window_seconds, context_seconds))
        return tokens if as_numpy else torch.from_numpy(tokens).to(audio.device)

    @torch.inference_mode()
    def decode(self, tokens, num_samples: int | None = None, *, window_seconds: float = DEFAULT_WINDOW_SECONDS,
               context_seconds: float = DEFAULT_CONTEXT_SECONDS):
        """Tokens ``[rows, T']`` or ``[B, rows, T']`` (int, numpy or torch) -> float32 audio ``[B, N']``
        at ``sample_rate``, ``N' = (c * T' - 1) * hop`` or ``num_samples`` when given (trimmed or
        zero-padded at the end). Long token streams are decoded in cross-faded windows."""
        as_numpy = not isinstance(tokens, torch.Tensor)
        array = check_tokens(tokens if as_numpy else tokens.detach().cpu().numpy(),
                             self.token_rows, self.codebook_size)
        device = next(self.parameters()).device

        def decode_fn(part: np.ndarray) -> np.ndarray:
            return self.detokenize(torch.from_numpy(part).to(device)).float().cpu().numpy()

        audio = torch.from_numpy(decode_windowed(array, decode_fn, **self._window_kwargs(window_seconds,
                                                                                           context_seconds)))
        if num_samples is not None:
            audio = audio[:, :num_samples]
            audio = torch.nn.functional.pad(audio, (0, num_samples - audio.shape[-1]))
        return audio.numpy() if as_numpy else audio.to(tokens.device)

    # --------------------------------------------------------------- creation
    @classmethod
    def from_config(cls, config_or_preset="paper") -> "MelTok":
        """A randomly initialised model from a ``MelTokConfig``, a preset name or a config dict."""
        return cls(resolve_config(config_or_preset))

    @classmethod
    def load(cls, path, *, device: str | torch.device = "cpu") -> "MelTok":
        """Load a meltok model file (safetensors; never unpickles)."""
        from .checkpoints import load_model_file

        return load_model_file(cls, path, device=device)

    def save(self, path) -> str:
        """Write the model file atomically; returns and sets the new ``model_id``."""
        from .checkpoints import save_model_file

        return save_model_file(self, path)

    @classmethod
    def from_official(cls, stage1_path, stage2_path, *, allow_pickle: bool = False) -> "MelTok":
        """Build a model from the reference implementation's stage-1 file and stage-2 Lightning
        checkpoint, inferring the architecture from the tensors' names and shapes."""
        from .checkpoints import load_official

        return load_official(cls, stage1_path, stage2_path, allow_pickle=allow_pickle)

    # -------------------------------------------------------------- streaming
    def stream_decoder(self, lookahead_seconds: float = DEFAULT_LOOKAHEAD_SECONDS,
                       context_seconds: float = STREAM_CONTEXT_SECONDS,
                       fade_seconds: float = DEFAULT_FADE_SECONDS) -> StreamDecoder:
        """A stream that decodes tokens as they arrive (``meltok_runtime.streaming``)."""
        device = next(self.parameters()).device

        @torch.inference_mode()
        def decode_fn(tokens: np.ndarray) -> np.ndarray:
            return self.detokenize(torch.from_numpy(tokens).to(device)).float().cpu().numpy()

        return StreamDecoder(decode_fn, self._stream_spec(), lookahead_seconds=lookahead_seconds,
                             context_seconds=context_seconds, fade_seconds=fade_seconds)

    def stream_encoder(self, lookahead_seconds: float = DEFAULT_LOOKAHEAD_SECONDS,
                       context_seconds: float = STREAM_CONTEXT_SECONDS) -> StreamEncoder:
        """A stream that encodes audio at ``sample_rate`` as it is captured (``meltok_runtime.streaming``)."""
        device = next(self.parameters()).device

        @torch.inference_mode()
        def encode_fn(audio: np.ndarray) -> np.ndarray:
            return self.tokenize(torch.from_numpy(audio).to(device)).cpu().numpy()

        return StreamEncoder(encode_fn, self._stream_spec(), lookahead_seconds=lookahead_seconds,
                             context_seconds=context_seconds)

    def _stream_spec(self) -> StreamSpec:
        columns = self._window_kwargs(DEFAULT_WINDOW_SECONDS, DEFAULT_CONTEXT_SECONDS)["window_columns"]
        return StreamSpec.from_contract(stream_contract(self.config), sample_rate=self.sample_rate,
                                        hop_length=self.hop_length, compression=self.config.tokenizer.compression,
                                        token_rows=self.token_rows, codebook_size=self.codebook_size,
                                        max_columns=columns)
