"""The optional packages of the export side, imported on use with one message naming the install command."""
from meltok_runtime.optional import import_optional

EXPORT_INSTALL = "pip install -e '.[export]'"


def import_onnx():
    return import_optional("onnx", install=EXPORT_INSTALL, purpose="ONNX export")


def import_onnxsim():
    return import_optional("onnxsim", install=EXPORT_INSTALL, purpose="ONNX export")


def import_quantization():
    """``onnxruntime.quantization`` (part of ``onnxruntime`` and ``onnxruntime-gpu``)."""
    return import_optional("onnxruntime.quantization", install="pip install -e '.[cpu]'", purpose="int8 export")
