"""A model with the phase-advance vocoder head exports to ONNX opset 17 within TensorRT 10's operator
list, and its decoder graph reproduces torch in ONNX Runtime."""
import numpy as np
import onnx
import onnxruntime
import torch

from meltok_export.onnx_export import export_graph
from meltok_export.op_support import check_tensorrt_ops, op_types


def test_phase_advance_decoder_exports_and_matches_torch(tiny_model, tmp_path):
    model = tiny_model.with_vocoder_head("phase_advance").eval()
    with torch.no_grad():
        model.head.out.weight.normal_(0, 0.05)  # non-zero deviations
    path = tmp_path / "decoder.onnx"
    export_graph(model, "decoder", path)
    graph = onnx.load(str(path))
    assert graph.opset_import[0].version == 17
    assert check_tensorrt_ops(graph) == []
    assert "CumSum" in op_types(graph)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tokens = torch.randint(0, model.codebook_size, (2, model.token_rows, 5), generator=torch.Generator().manual_seed(0))
    (audio,) = session.run(None, {session.get_inputs()[0].name: tokens.numpy().astype(np.int32)})
    with torch.no_grad():
        expected = model.detokenize(tokens).numpy()
    assert audio.shape == expected.shape
    np.testing.assert_allclose(audio, expected, rtol=0, atol=1e-4 * max(1.0, float(np.abs(expected).max())))
