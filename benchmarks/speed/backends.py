"""The backends ``benchmarks.speed`` times, and whether each can run here."""
from __future__ import annotations

# name -> how it runs. "eager": the PyTorch eager backend its speed-up is measured against;
# "rate": the matmul rate (cost.py) that sets its FLOP floor.
BACKENDS = {
    "torch-cpu-fp32": dict(kind="torch", device="cpu", precision="fp32", eager="torch-cpu-fp32", rate="cpu-fp32"),
    "torch-cuda-fp32": dict(kind="torch", device="cuda", precision="fp32", eager="torch-cuda-fp32", rate="cuda-fp32"),
    "torch-cuda-tf32": dict(kind="torch", device="cuda", precision="tf32", eager="torch-cuda-fp32", rate="cuda-tf32"),
    "torch-cuda-fp16": dict(kind="torch", device="cuda", precision="fp16", eager="torch-cuda-fp32", rate="cuda-fp16"),
    "ort-cpu-fp32": dict(kind="runtime", runtime="ort-cpu", device="cpu", engine="onnx", precision="fp32",
                         eager="torch-cpu-fp32", rate="cpu-fp32"),
    "ort-cpu-int8": dict(kind="runtime", runtime="ort-cpu", device="cpu", engine="onnx", precision="int8",
                         eager="torch-cpu-fp32", rate="cpu-fp32"),
    # ONNX Runtime's CUDA EP may use TF32 for float32 convolutions and matmuls: its floor is the TF32 rate.
    "ort-cuda-fp32": dict(kind="runtime", runtime="ort-cuda", device="cuda", engine="onnx", precision="fp32",
                          eager="torch-cuda-fp32", rate="cuda-tf32"),
    "ort-cuda-fp16": dict(kind="runtime", runtime="ort-cuda", device="cuda", engine="onnx", precision="fp16",
                          eager="torch-cuda-fp32", rate="cuda-fp16"),
    "trt-fp16": dict(kind="runtime", runtime="trt", device="cuda", engine="trt", precision="fp16",
                     eager="torch-cuda-fp32", rate="cuda-fp16"),
}
OPS = ("encode", "decode")
GRAPH_OF = {"encode": "encoder", "decode": "decoder"}
def check_backend(name: str, cuda: bool) -> str | None:
    """None when the libraries of ``name`` are present here, else why not (bundles are checked later)."""
    backend = BACKENDS[name]
    if backend["kind"] == "torch":
        try:
            import torch  # noqa: F401
        except ImportError as error:
            return f"torch is not installed ({error})"
        if backend["device"] == "cuda" and not cuda:
            return "no CUDA device (torch.cuda.is_available() is False)"
        return None
    from meltok_runtime.backends import cuda as cuda_api
    from meltok_runtime.backends import ort, trt
    from meltok_runtime.errors import MeltokError

    try:
        if backend["runtime"] == "trt":
            trt.import_tensorrt()
            trt.gpu_here(cuda_api.import_cudart(), 0)
        elif backend["runtime"] == "ort-cuda":
            ort.OrtCudaBackend.check_available(None, None)
        else:
            ort.import_onnxruntime()
    except MeltokError as error:
        return short(error, 300)
    return None


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False




def short(text, limit: int = 160) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
