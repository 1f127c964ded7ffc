"""The time-local variant exports within TensorRT 10's operator list (fp32 and fp16) and its bundle
manifest tells the runtime its receptive field."""
import onnx
import pytest

from meltok.receptive_field import stream_contract
from meltok_export.onnx_export import export_onnx
from meltok_export.op_support import check_tensorrt_ops, op_types

# What banded attention adds to the reference graphs' operators (tests/export/test_op_support.py):
# the column indices (Range), their distance (Sub, Abs, LessOrEqual), the band tiled over the rows
# (Tile) and the masking (Where). All are in TensorRT 10's list without restrictions.
LOCAL_OPS = {"Range", "Abs", "LessOrEqual", "Tile", "Where", "Sub"}


def test_bundle_manifest_carries_the_stream_contract(tiny_local_bundle):
    from meltok_runtime.manifest import load_manifest

    model, folder = tiny_local_bundle
    contract = load_manifest(folder).streaming
    assert contract == stream_contract(model.config)
    assert contract["time_local"] and contract["encoder_dependency"][0] < 0 < contract["decoder_influence"][1]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_local_graphs_fit_tensorrt_10(tiny_local_bundle, tmp_path, precision):
    from tests.export.test_op_support import EXPECTED_OPS

    model, folder = tiny_local_bundle
    if precision != "fp32":
        folder = tmp_path
        export_onnx(model, folder, precision=precision)
    for graph in ("encoder", "decoder"):
        onnx_model = onnx.load(str(folder / f"{graph}.onnx"))
        ops = set(op_types(onnx_model))
        assert check_tensorrt_ops(onnx_model) == []
        assert ops <= EXPECTED_OPS[graph] | LOCAL_OPS, ops - EXPECTED_OPS[graph] - LOCAL_OPS
        assert {"Range", "Where", "InstanceNormalization"} <= ops
