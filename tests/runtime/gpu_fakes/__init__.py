"""A GPU emulated with numpy, so that the GPU backends' code runs on any CPU (the default test suite).

- ``FakeCudart``: the cuda-python runtime API the backends call, with real memory semantics: device
  buffers are numpy byte arrays at fake addresses, copies read and write real host memory (by address,
  as CUDA does), every copy checks its direction, its bounds and its size, asynchronous work is queued on
  its stream in order and done only at ``cudaStreamSynchronize``, and the default stream is refused.
- ``fake_tensorrt(cudart)``: a ``tensorrt`` module whose engines are the ONNX graphs themselves: the
  execution context checks its optimisation profile, takes tensor addresses, and ``execute_async_v3``
  enqueues a run of the real graph (ONNX Runtime CPU) on the bytes at the bound device addresses, read
  with the engine's dtypes.
- ``FakeOrtModule``: ``onnxruntime`` with a CUDA provider whose IO binding refuses to run before
  ``synchronize_inputs`` and whose outputs live "on the device" until copied.

Wrong copy sizes, orders or dtypes in a backend give wrong bytes or a ``FakeCudaError``, which the tests
detect by comparing with ONNX Runtime CPU. The fakes run the same graph with the same library, so equal
outputs say that data moved correctly, nothing about GPU numerics (TF32, fp16 kernels, TensorRT's layer
fusions): the precision contract rests on the CPU emulation in ``tests/export/test_tf32_contract.py``.
``cudaMallocHost`` gives page-locked host memory and the fake counts asynchronous copies from pageable
memory; ``fake_tensorrt_builder`` records what is asked of TensorRT's builder.
"""
from .cuda_device import FakeCudaError, FakeCudart, FakeDriver
from .ort_binding import FakeIOBinding, FakeOrtModule, FakeOrtSession
from .trt_engines import FakeContext, engine_bytes, fake_tensorrt, fake_tensorrt_builder

__all__ = ["FakeContext", "FakeCudaError", "FakeCudart", "FakeDriver", "FakeIOBinding", "FakeOrtModule",
           "FakeOrtSession", "engine_bytes", "fake_tensorrt", "fake_tensorrt_builder"]
