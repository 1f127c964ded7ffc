"""meltok_export: MelTok (torch) -> ONNX graphs, TensorRT engines and verified export bundles.

``export_bundle(model, out)`` writes a bundle folder that ``meltok_runtime`` runs without torch;
``verify_bundle(bundle, model)`` reruns its verification.
"""
from meltok_runtime import __version__

__all__ = ["__version__", "export_bundle", "export_onnx", "verify_bundle", "check_tensorrt_ops", "build_engine"]


def __getattr__(name):
    # Lazy, so that `import meltok_export` (and its CLI's --help) stays fast and torch loads only when used.
    if name == "export_bundle":
        from .bundle import export_bundle
        return export_bundle
    if name == "export_onnx":
        from .onnx_export import export_onnx
        return export_onnx
    if name == "verify_bundle":
        from .verify import verify_bundle
        return verify_bundle
    if name == "check_tensorrt_ops":
        from .op_support import check_tensorrt_ops
        return check_tensorrt_ops
    if name == "build_engine":
        from .tensorrt_build import build_engine
        return build_engine
    raise AttributeError(f"module 'meltok_export' has no attribute {name!r}")
