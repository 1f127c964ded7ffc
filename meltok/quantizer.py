"""Single-codebook vector quantizer (reference ``VectorQuantizer``, legacy loss, no EMA)."""
import torch
from torch import nn


class VectorQuantizer(nn.Module):
    """Nearest code by squared L2 distance ``|z|^2 + |e|^2 - 2 z.e``, straight-through gradients.

    Latents are ``[B, D, R, T]``; tokens are int64 ``[B, R, T]``.
    """

    def __init__(self, codebook_size: int, embedding_dim: int, beta: float = 0.25):
        super().__init__()
        self.codebook_size, self.embedding_dim, self.beta = codebook_size, embedding_dim, beta
        self.embedding = nn.Embedding(codebook_size, embedding_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, D, R, T] -> [B, R, T, K]`` squared distances, computed in float32."""
        flat = z.float().permute(0, 2, 3, 1)
        codebook = self.embedding.weight.float()
        return ((flat * flat).sum(-1, keepdim=True) + (codebook * codebook).sum(-1)
                - 2.0 * torch.matmul(flat, codebook.t()))

    def tokenize(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, D, R, T] -> [B, R, T]`` int64 code indices."""
        return torch.argmin(self.distances(z), dim=-1)

    def lookup(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, R, T]`` int -> ``[B, D, R, T]`` codebook rows."""
        return self.embedding(tokens.long()).permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(z_q [B, D, R, T], vq_loss scalar, tokens [B, R, T])``.

        The loss is the reference's legacy form: ``mean((sg[e] - z)^2) + beta * mean((e - sg[z])^2)``.
        """
        tokens = self.tokenize(z)
        codes = self.lookup(tokens).to(z.dtype)
        loss = torch.mean((codes.detach() - z) ** 2) + self.beta * torch.mean((codes - z.detach()) ** 2)
        z_q = z + (codes - z).detach()
        return z_q, loss, tokens
