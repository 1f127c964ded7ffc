"""The float16 variant built in torch: islands in place, the model itself untouched, attention unchanged."""
import torch
from torch import nn

from meltok.tokenizer import AttnBlock
from meltok_export.onnx_export import Float16Attention, PrecisionIsland, precision_variant


def test_fp16_variant_keeps_islands_and_leaves_the_model_alone(tiny_model):
    variant = precision_variant(tiny_model, "fp16")
    assert all(p.dtype == torch.float32 for p in tiny_model.parameters())
    for module in (variant.frontend, variant.quantizer, variant.head):
        assert all(p.dtype == torch.float32 for p in module.parameters())
    norms = [m for m in variant.modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm))]
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)
    convs = [m for name, m in variant.named_modules() if isinstance(m, nn.Conv2d) and "frontend" not in name]
    assert convs and all(m.weight.dtype == torch.float16 for m in convs)
    assert not any(type(m) is AttnBlock and not isinstance(p, Float16Attention)
                   for p in variant.modules() for m in p.children())
    assert isinstance(variant.backbone.module.final_layer_norm, PrecisionIsland)
    assert variant.backbone.module.final_layer_norm.output == torch.float32


def test_float16_attention_computes_what_attn_block_computes():
    torch.manual_seed(0)
    block = AttnBlock(64, 32).eval()
    x = torch.randn(2, 64, 3, 7)
    with torch.no_grad():
        torch.testing.assert_close(Float16Attention(block)(x), block(x), rtol=1e-5, atol=1e-5)
