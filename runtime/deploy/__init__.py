"""Deploying a bundle on the machine that runs it: ``machine`` (what this machine has), ``doctor``
(whether a bundle runs here and how to fix what stops it), ``bench`` (latency and throughput of the
backends this machine has). TensorRT engines are built by ``meltok_runtime.engines``."""
