"""The backend interface: one graph of a bundle behind ``open``/``close`` and ``run(feeds)``.

In the manner of Polygraphy's runners: the base class owns the life cycle, the input/output
specifications (taken from the bundle's manifest) and every check on the feeds; a subclass
implements only ``_open``, ``_run`` and ``_close``, and ``check_available`` for the automatic choice.

Thread safety: ``run`` may be called from several threads at once on one open backend. A
backend whose execution state is shared between calls (a TensorRT execution context, its device
buffers and stream) sets ``serialize_runs = True`` and the base class runs it under a lock;
ONNX Runtime sessions are safe for concurrent ``run`` calls and run in parallel. ``open`` and
``close`` are serialised with each other; ``close`` waits for a serialised run in progress.
"""
from __future__ import annotations

import abc
import threading
from pathlib import Path

import numpy as np

from meltok_runtime.errors import BackendError, InputSpecError
from meltok_runtime.manifest import Manifest, TensorSpec


class Backend(abc.ABC):
    """One graph (``"encoder"`` or ``"decoder"``) of a bundle, run by one inference library."""

    name = "abstract"
    serialize_runs = False

    def __init__(self, bundle, manifest: Manifest, graph: str, *, threads: int | None = None):
        if graph not in manifest.graphs:
            raise BackendError(f"the bundle has no {graph!r} graph; choose one of {sorted(manifest.graphs)}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise BackendError(f"threads must be a positive integer or None, got {threads!r}")
        self.bundle = Path(bundle)
        self.manifest = manifest
        self.graph_name = graph
        self.graph = manifest.graphs[graph]
        self.threads = threads
        self._state_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._is_open = False

    # ------------------------------------------------------------ availability
    @classmethod
    def check_available(cls, bundle, manifest: Manifest) -> None:
        """Raise a MeltokError (BackendError, ModelMismatchError, ...) saying why this backend
        cannot run this bundle here; return None when it can. Cheap: opens no session."""

    # ---------------------------------------------------------------- metadata
    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.graph.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.graph.outputs

    @property
    def is_open(self) -> bool:
        return self._is_open

    def __repr__(self) -> str:
        state = "open" if self._is_open else "closed"
        return f"<{type(self).__name__} {self.name} {self.graph_name} ({state})>"

    # -------------------------------------------------------------- life cycle
    def open(self) -> "Backend":
        with self._state_lock:
            if not self._is_open:
                self._open()
                self._is_open = True
        return self

    def close(self) -> None:
        with self._state_lock, self._run_lock:
            if self._is_open:
                self._is_open = False
                self._close()

    def __enter__(self) -> "Backend":
        return self.open()

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --------------------------------------------------------------- inference
    def run(self, feeds: dict) -> dict:
        """``{input name: array}`` -> ``{output name: numpy array}`` (host memory, owned by the caller)."""
        checked = self.check_feeds(feeds)
        if self.serialize_runs:
            with self._run_lock:
                self._require_open()
                outputs = self._run(checked)
        else:
            self._require_open()
            outputs = self._run(checked)
        missing = [spec.name for spec in self.outputs if spec.name not in outputs]
        if missing:
            raise BackendError(f"{self.name} returned no {missing} for the {self.graph_name} graph; "
                               "the bundle's graph does not match its manifest: re-export it")
        return {spec.name: outputs[spec.name] for spec in self.outputs}

    def check_feeds(self, feeds: dict) -> dict:
        """Check names, dtypes, ranks and fixed sizes against the manifest; return C-contiguous arrays."""
        if not isinstance(feeds, dict):
            raise InputSpecError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}")
        expected = {spec.name for spec in self.inputs}
        missing, unexpected = sorted(expected - set(feeds)), sorted(set(feeds) - expected)
        if missing or unexpected:
            raise InputSpecError(f"the {self.graph_name} graph takes inputs {sorted(expected)}; got "
                                 f"{sorted(feeds)} (missing {missing}, unexpected {unexpected})")
        sizes: dict = {}
        checked = {}
        for spec in self.inputs:
            array = feeds[spec.name]
            if not isinstance(array, np.ndarray):
                raise InputSpecError(f"input {spec.name!r} must be a numpy array, got {type(array).__name__}")
            if array.dtype != np.dtype(spec.dtype):
                raise InputSpecError(f"input {spec.name!r} has dtype {array.dtype}; the {self.graph_name} graph "
                                     f"expects {spec.dtype}")
            if array.ndim != len(spec.shape):
                raise InputSpecError(f"input {spec.name!r} has shape {list(array.shape)}; the {self.graph_name} "
                                     f"graph expects rank {len(spec.shape)} {list(spec.shape)}")
            for axis, (size, dim) in enumerate(zip(array.shape, spec.shape)):
                if size < 1:
                    raise InputSpecError(f"input {spec.name!r} is empty along axis {axis} "
                                         f"(shape {list(array.shape)})")
                if isinstance(dim, int) and dim >= 0 and size != dim:
                    raise InputSpecError(f"input {spec.name!r} has size {size} on axis {axis}; the "
                                         f"{self.graph_name} graph expects {dim} ({list(spec.shape)})")
                if isinstance(dim, str) and sizes.setdefault(dim, size) != size:
                    raise InputSpecError(f"input {spec.name!r} has {dim}={size} but another input has "
                                         f"{dim}={sizes[dim]}")
            checked[spec.name] = np.ascontiguousarray(array)
        return checked

    def _require_open(self) -> None:
        if not self._is_open:
            raise BackendError(f"the {self.name} backend for the {self.graph_name} graph is not open "
                               "(call open() or use it as a context manager)")

    # -------------------------------------------------------- implementations
    @abc.abstractmethod
    def _open(self) -> None:
        """Load the graph or engine; raise BackendError/BundleError/ModelMismatchError on failure."""

    @abc.abstractmethod
    def _run(self, feeds: dict) -> dict:
        """Run on checked, contiguous feeds; return at least every output named in the manifest."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Release sessions, engines and device memory."""
