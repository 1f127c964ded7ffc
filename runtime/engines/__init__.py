"""TensorRT engines for a bundle, built where they run, without PyTorch (``meltok-rt engines``).

``plan`` (every build decision, from the manifest), ``builder`` (TensorRT's builder run on a plan: the
one implementation, also used by ``meltok-export --engine trt``), ``commands`` (the equivalent
``trtexec``/``polygraphy`` lines), ``reference`` (the bundle's verification clip and the check of new
engines against ONNX Runtime CPU), ``bundle`` (build, check and add engines to a bundle atomically).
Only ``builder`` needs TensorRT, imported when a build starts.
"""
