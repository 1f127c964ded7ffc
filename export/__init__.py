"""meltok_export: MelTok (torch) -> ONNX graphs, TensorRT engines and verified export bundles.

``export_bundle(model, out)`` writes a bundle folder that ``meltok_runtime`` runs without torch;
``verify_bundle(bundle, model)`` reruns its verification; ``write_triton_repository(bundle, repo)``
writes a Triton Inference Server model repository from a bundle (no torch).
"""
from meltok_runtime import __version__
from meltok_runtime.lazy import lazy_attributes

# Lazy, so that `import meltok_export` (and its CLI's --help) stays fast and torch loads only when used.
_LAZY = {"export_bundle": "bundle", "export_onnx": "onnx_export", "verify_bundle": "verify",
         "check_tensorrt_ops": "op_support", "write_triton_repository": "triton_repository"}

__all__ = ["__version__", "export_bundle", "export_onnx", "verify_bundle", "check_tensorrt_ops",
           "write_triton_repository"]

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
