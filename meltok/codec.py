"""The MelTok codec: audio -> tokens ``[B, rows, T']`` -> audio, as one torch module."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from meltok_runtime.pipeline import CodecPipeline
from meltok_runtime.windowing import DEFAULT_CONTEXT_SECONDS, DEFAULT_WINDOW_SECONDS, Progress

from . import receptive_field
from .config import MEL_INVERSION_HEAD, MelTokConfig, head_variant, resolve_config
from .frontend import MelFrontend
from .errors import ConfigError
from .loaders import load_model
from .modelfile import save_model_file
from .official import load_official
from .quantizer import VectorQuantizer
from .tokenizer import Decoder2d, Encoder2d
from .vocoder import MelInversionHead, build_backbone, build_head


TOKENIZER_PARTS = ("encoder.", "quant_conv.", "quantizer.")  # the weights tokens depend on


class MelTok(CodecPipeline, nn.Module):
    """Mel front end, 2D tokenizer encoder + VQ, and the token vocoder.

    Tensor stages (used by export and training) work on torch tensors; ``encode`` and
    ``decode`` are the user API and accept numpy arrays or tensors. Validation, resampling,
    windows and trimming: ``meltok_runtime.pipeline.CodecPipeline``, shared with the runtime's
    ``Codec``; this class supplies the two graph calls and the contract.
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
        self.backbone = build_backbone(config)  # the identity for the mel_inversion head
        self.head = build_head(config)
        self.model_id = f"{config.name}:untrained"
        self.model_id_basis: str | None = None  # what model_id names (modelfile.architecture_digest), once known
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
    def compression(self) -> int:
        """Samples per token column, in hops (8 for the paper layout)."""
        return self.config.tokenizer.compression

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

    def decode_features(self, z_q: torch.Tensor) -> torch.Tensor:
        """``codes [B, D, rows, T'] -> vocoder input [B, n_mels, c * T']``, clamped at ``ln(log_floor)``.

        After stage 1 this is the log-mel; stage 2 fine-tunes the decoder for the vocoder, so its
        output is then a mel-shaped feature, no longer a log-mel (values far above any log-mel)."""
        mel = self.decoder(self.post_quant_conv(z_q))[:, 0] * self.config.frontend.mel_scale
        return torch.clamp(mel, min=float(np.log(np.float32(self.config.frontend.log_floor))))

    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """``log-mel [B, n_mels, T] -> audio [B, (T - 1) * hop]`` (``mel_inversion``: ``MelInverter``, numpy,
        from the start of a stream)."""
        return self.head(self.backbone(mel))

    @property
    def mel_inverter(self):
        """``mel_inversion`` models: the ``MelInverter`` that finishes the decode graph's log-mel (as the
        runtime does on their bundles); None for a neural vocoder."""
        return self.head.inverter if isinstance(self.head, MelInversionHead) else None

    def detokenize(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, rows, T'] -> audio [B, (c * T' - 1) * hop]``."""
        return self.vocode(self.decode_features(self.quantizer.lookup(tokens)))

    # ---------------------------------------------------------------- user API
    @torch.inference_mode()
    def encode(self, audio, sample_rate: int = 44100, *, pad: bool = True, channels_last: bool = False,
               window_seconds: float = DEFAULT_WINDOW_SECONDS, context_seconds: float = DEFAULT_CONTEXT_SECONDS,
               progress: Progress | None = None):
        """Audio ``[N]``, ``[B, N]`` or ``[B, C, N]`` (numpy or torch) -> tokens ``[B, rows, T']``.

        Other sample rates are resampled, channels are mixed down; ``channels_last``: ``[N, C]``
        or ``[B, N, C]`` (``soundfile.read``'s layout). With ``pad`` (default) the audio is
        zero-padded at the end so that decoding covers every input sample
        (``decode(tokens, num_samples=N)`` then returns exactly N samples); ``pad=False`` gives
        the reference implementation's tokens exactly. Audio longer than ``window_seconds`` is
        encoded in windows with ``context_seconds`` of context (``meltok_runtime.windowing``, the
        same plan as the runtime), so attention memory stays bounded. Numpy in gives numpy out.
        """
        windows = self.window_layout(window_seconds, context_seconds)
        tokens = self._encode_numpy(_to_numpy(audio), sample_rate, pad=pad, channels_last=channels_last,
                                    windows=windows, progress=progress)
        return tokens if not isinstance(audio, torch.Tensor) else torch.from_numpy(tokens).to(audio.device)

    @torch.inference_mode()
    def decode(self, tokens, num_samples: int | None = None, *, sample_rate: int | None = None,
               window_seconds: float = DEFAULT_WINDOW_SECONDS, context_seconds: float = DEFAULT_CONTEXT_SECONDS,
               progress: Progress | None = None):
        """Tokens ``[rows, T']`` or ``[B, rows, T']`` (int, numpy or torch) -> float32 audio ``[B, N']``.

        At the model's rate ``N' = (c * T' - 1) * hop``; ``sample_rate`` resamples the result;
        ``num_samples`` (at that rate) trims it, or zero-pads it at the end by at most one token
        column. Long token streams are decoded in cross-faded windows."""
        windows = self.window_layout(window_seconds, context_seconds)
        audio = self._decode_numpy(_to_numpy(tokens), num_samples, sample_rate=sample_rate, windows=windows,
                                   progress=progress)
        return audio if not isinstance(tokens, torch.Tensor) else torch.from_numpy(audio).to(tokens.device)

    def tokenizer_difference(self, other: "MelTok") -> str | None:
        """Why ``other`` could give other tokens for the same audio (front end, tokenizer settings, encoder,
        quant_conv or codebook differ), or None: then each decodes the other's token files."""
        if self.config.frontend != other.config.frontend:
            return "their front ends differ"
        if self.config.tokenizer != other.config.tokenizer:
            return "their tokenizer settings differ"
        ours, theirs = self.state_dict(), other.state_dict()
        for name in sorted(key for key in ours if key.startswith(TOKENIZER_PARTS)):
            if not torch.equal(ours[name].cpu(), theirs[name].cpu()):
                return f"their {name} differs"
        return None

    @property
    def stream_contract(self) -> dict:
        """The receptive field streams need (time-local variant; ``{}`` for the reference architecture)."""
        return receptive_field.stream_contract(self.config)

    # ------------------------------------------------------------- graph calls
    def _encode_graph(self, audio: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.tokenize(torch.from_numpy(audio).to(self._device())).cpu().numpy()

    def _decode_graph(self, tokens: np.ndarray) -> np.ndarray:
        """Audio; for ``mel_inversion`` the log-mel (``decode_features``), finished by the pipeline."""
        with torch.inference_mode():
            tokens = torch.from_numpy(tokens).to(self._device())
            if self.mel_inverter is not None:
                return self.decode_features(self.quantizer.lookup(tokens)).float().cpu().numpy()
            return self.detokenize(tokens).float().cpu().numpy()

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    # --------------------------------------------------------------- creation
    @classmethod
    def from_config(cls, config_or_preset="paper") -> "MelTok":
        """A randomly initialised model from a ``MelTokConfig``, a preset name or a config dict."""
        return cls(resolve_config(config_or_preset))

    @classmethod
    def load(cls, path=None, *, device: str | torch.device = "cpu") -> "MelTok":
        """Load a model file (safetensors; never unpickles), a training run folder or a preset
        (``loaders.load_model``); without ``path``, the model shipped with the package."""
        return load_model(cls, path, device=device)

    def save(self, path) -> str:
        """Write the model file atomically; returns and sets its ``model_id`` (kept when weights and
        architecture are those it was loaded with: the rule in ``meltok.modelfile``)."""
        return save_model_file(self, path)

    def with_vocoder_head(self, head: str) -> "MelTok":
        """A new model with vocoder head ``head`` (``config.head_variant``), initialised from this one:
        every other weight copied; a phase-advance head from a reference head takes its log-magnitude
        rows and starts with zero deviation (bin-centre frequencies); a ``mel_inversion`` model (from any
        head) keeps the encoder, quant_conv, codebook, post_quant_conv and decoder, and drops the
        backbone and head (it has none)."""
        if head == self.config.vocoder.head:
            return self
        supported = (("istft", "phase_advance"), (self.config.vocoder.head, MEL_INVERSION_HEAD))
        if (self.config.vocoder.head, head) not in supported:
            raise ConfigError(f"cannot initialise a {head!r} head from a {self.config.vocoder.head!r} head; "
                              f"supported: istft -> phase_advance, any -> {MEL_INVERSION_HEAD}")
        model = MelTok(head_variant(self.config, head)).to(self._device())
        vocoder = ("head.", "backbone.") if head == MEL_INVERSION_HEAD else ("head.",)
        state = {key: value for key, value in self.state_dict().items() if not key.startswith(vocoder)}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or (head == MEL_INVERSION_HEAD and missing):
            raise ConfigError(f"the {head!r} model does not take this model's weights (missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]}): this is a bug")
        if head == "phase_advance":
            model.head.init_from_reference(self.head)
        return model.train(self.training)

    @classmethod
    def from_official(cls, stage1_path, stage2_path, *, allow_pickle: bool = False) -> "MelTok":
        """Build a model from the reference implementation's stage-1 file and stage-2 Lightning
        checkpoint, inferring the architecture from the tensors' names and shapes."""
        return load_official(cls, stage1_path, stage2_path, allow_pickle=allow_pickle)


def _to_numpy(array):
    """A torch tensor as a numpy array (detached, on the CPU); anything else unchanged."""
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else array
