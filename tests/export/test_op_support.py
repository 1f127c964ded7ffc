"""Both graphs, fp32 and fp16, of the tiny preset and the official-tiny model hold to TensorRT 10's
ONNX operator support list (restrictions included) and contain no STFT/DFT ops."""
import onnx
import pytest
from onnx import TensorProto, helper

from meltok_export import op_support
from meltok_export.op_support import RESTRICTION_CHECKS, check_tensorrt_ops, op_types, support_table
from meltok_runtime.errors import BundleError

# Every operator the exported graphs may use; a new one needs a look at its TensorRT support first.
EXPECTED_OPS = {
    "encoder": {"Add", "ArgMin", "Cast", "Clip", "Concat", "Constant", "Conv", "Div", "Gather",
                "InstanceNormalization", "Log", "MatMul", "Mul", "Pad", "ReduceSum", "Reshape", "Shape", "Slice",
                "Softmax", "Sqrt", "Sub", "Tanh", "Transpose", "Unsqueeze"},
    "decoder": {"Add", "Cast", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos",
                "Div", "Erf", "Exp", "Gather", "Gemm", "InstanceNormalization", "LayerNormalization", "MatMul", "Mul",
                "Reshape", "Resize", "Shape", "Sin", "Slice", "Softmax", "Tanh", "Transpose", "Unsqueeze"},
}
CASES = [(name, precision) for name in ("tiny", "official") for precision in ("fp32", "fp16")]


def test_support_table_is_shipped_and_parsed():
    table = support_table()
    assert len(table) > 150
    assert table["Conv"].supported and table["ConvTranspose"].supported
    assert not table["STFT"].supported and not table["DFT"].supported
    assert "nearest" in table["Resize"].restrictions


def test_every_restricted_operator_has_a_checker():
    restricted = {name for name, entry in support_table().items() if entry.supported and entry.restrictions}
    assert restricted - set(RESTRICTION_CHECKS) == set()


@pytest.mark.parametrize("name,precision", CASES)
def test_graphs_fit_tensorrt_10(exported, name, precision):
    folder = exported(name, precision)
    for graph in ("encoder", "decoder"):
        model = onnx.load(str(folder / f"{graph}.onnx"))
        ops = op_types(model)
        print(f"{name} {precision} {graph}: {dict(sorted(ops.items()))}")
        assert check_tensorrt_ops(model) == []
        assert not {"STFT", "DFT"} & set(ops)
        assert set(ops) <= EXPECTED_OPS[graph], set(ops) - EXPECTED_OPS[graph]
        assert model.opset_import[0].version == 17


def _input_types(model):
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input)}
    types.update({i.name: i.data_type for i in inferred.graph.initializer})
    return inferred, types


@pytest.mark.parametrize("name", ["tiny", "official"])
def test_fp16_graphs_mark_the_float32_islands_with_casts(exported, name):
    folder = exported(name, "fp16")
    islands = {"encoder": ("ArgMin", "Log", "Sqrt"), "decoder": ("Exp", "Cos", "Sin", "istft/ConvTranspose")}
    for graph in ("encoder", "decoder"):
        inferred, types = _input_types(onnx.load(str(folder / f"{graph}.onnx")))
        casts = [n for n in inferred.graph.node if n.op_type == "Cast"]
        targets = {helper.get_attribute_value(a) for n in casts for a in n.attribute if a.name == "to"}
        assert {TensorProto.FLOAT16, TensorProto.FLOAT} <= targets
        for node in inferred.graph.node:
            if node.op_type in islands[graph] or any(part in node.name for part in islands[graph] if "/" in part):
                assert types[node.input[0]] == TensorProto.FLOAT, f"{graph} {node.op_type} {node.name}"
            if node.op_type in ("InstanceNormalization", "LayerNormalization"):
                assert types[node.input[0]] == TensorProto.FLOAT, f"norms stay float32: {node.name}"
        convs = [n for n in inferred.graph.node if n.op_type == "Conv"]
        half = [n for n in convs if types[n.input[1]] == TensorProto.FLOAT16]
        assert len(half) >= len(convs) - 2  # all but the STFT (encoder) / none (decoder) run in float16


def _graph(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _value(name, elem=TensorProto.FLOAT, shape=("n", 4)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def test_violations_are_reported():
    x, y = _value("x"), _value("y")
    cases = {
        "STFT": _graph([helper.make_node("STFT", ["x", "step"], ["y"])], [x, _value("step", TensorProto.INT64, [])],
                       [y], opset=17),
        "custom domain": _graph([helper.make_node("Foo", ["x"], ["y"], domain="com.example")], [x], [y]),
        "not in the list": _graph([helper.make_node("Foo", ["x"], ["y"])], [x], [y]),
        "cubic": _graph([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="cubic")],
                        [x], [y], [helper.make_tensor("scales", TensorProto.FLOAT, [2], [1.0, 2.0])]),
        "axes": _graph([helper.make_node("Slice", ["x", "s", "e", "axes"], ["y"])],
                       [x, *(_value(n, TensorProto.INT64, [1]) for n in ("s", "e", "axes"))], [y]),
        "DOUBLE": _graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.DOUBLE)], [x],
                         [_value("y", TensorProto.DOUBLE)]),
    }
    for expected, model in cases.items():
        violations = check_tensorrt_ops(model)
        assert violations and any(expected.split()[0] in v or expected in v for v in violations), (expected, violations)
    fine = _graph([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                                    coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
                  [x], [y], [helper.make_tensor("scales", TensorProto.FLOAT, [2], [1.0, 2.0])])
    assert check_tensorrt_ops(fine) == []


def test_export_refuses_a_graph_that_violates(tiny_model, tmp_path, monkeypatch):
    from meltok_export.onnx_export import export_graph

    monkeypatch.setitem(op_support.BANNED_OPS, "ArgMin", "ArgMin (banned for this test)")
    with pytest.raises(BundleError, match="ArgMin"):
        export_graph(tiny_model, "encoder", tmp_path / "encoder.onnx")
    assert not (tmp_path / "encoder.onnx").exists()
