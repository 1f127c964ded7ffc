"""The ``meltok`` model of a Triton repository (``meltok/1/model.py``): MelTok's audio pipeline on the
Python backend, calling the ``meltok_encoder`` and ``meltok_decoder`` graph models through BLS.

Runs inside Triton only (it imports ``triton_python_backend_utils``), with ``meltok`` installed in
the Python that runs it. Each request is one of:

- encode: ``audio`` float32 ``[N]`` (mono) and ``sample_rate`` int32 ``[1]`` -> ``encoded_tokens``
  int64 ``[rows, T']`` and ``encoded_num_samples`` int64 ``[1]`` (``N``, to decode to this length);
- decode: ``tokens`` int64 ``[rows, T']``, optional ``num_samples`` int64 ``[1]`` and ``sample_rate``
  int32 ``[1]`` (the rate to return) -> ``decoded_audio`` float32 ``[N']`` and ``decoded_sample_rate``.

The work is ``meltok_runtime.graph_codec.GraphCodec`` (resampling, windows, batching, trimming,
input checks), the runtime's own code; this file turns Triton tensors into arrays and back, and a
bad request into that request's error response.
"""
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from meltok_export.triton_repository import (AUDIO, DECODED_AUDIO, DECODED_SAMPLE_RATE, ENCODED_NUM_SAMPLES,
                                             ENCODED_TOKENS, NUM_SAMPLES, SAMPLE_RATE, TOKENS)
from meltok_runtime.errors import AudioInputError, BackendError, InputSpecError, MeltokError
from meltok_runtime.graph_codec import GraphCodec
from meltok_runtime.manifest import MANIFEST_NAME, Manifest


class TritonPythonModel:
    """Triton's Python-backend interface: ``initialize(args)``, ``execute(requests)``, ``finalize()``."""

    def initialize(self, args):
        """Read the bundle manifest beside this file and the graph models' names from the config."""
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        path = Path(args["model_repository"]) / str(args["model_version"]) / MANIFEST_NAME
        manifest = Manifest.from_json(path.read_text(), source=str(path))
        encoder, decoder = manifest.graphs["encoder"], manifest.graphs["decoder"]
        self.codec = GraphCodec(
            manifest,
            _bls_graph(parameters["encoder_model"], encoder.inputs[0], encoder.outputs[0].name),
            _bls_graph(parameters["decoder_model"], decoder.inputs[0], decoder.outputs[0].name),
            max_batch=int(parameters["max_batch"]))

    def execute(self, requests):
        """One response per request, in order; a bad request gets an error response, the others still run."""
        return [self._respond(request) for request in requests]

    def finalize(self):
        self.codec = None

    def _respond(self, request):
        try:
            outputs = self._run(request)
        except MeltokError as error:
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(error)))
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, array)
                                                          for name, array in outputs.items()])

    def _run(self, request) -> dict:
        audio, tokens = _array(request, AUDIO), _array(request, TOKENS)
        rate, num_samples = _scalar(request, SAMPLE_RATE), _scalar(request, NUM_SAMPLES)
        if (audio is None) == (tokens is None):
            raise InputSpecError(f"a request holds either {AUDIO!r} (to encode) or {TOKENS!r} (to decode), "
                                  "not both or none")
        if audio is not None:
            if rate is None:
                raise AudioInputError(f"{AUDIO!r} needs {SAMPLE_RATE!r}, the rate of the audio in Hz")
            encoded = self.codec.encode(audio, rate)
            return {ENCODED_TOKENS: encoded[0], ENCODED_NUM_SAMPLES: np.array([audio.shape[-1]], dtype=np.int64)}
        rate = self.codec.sample_rate if rate is None else rate
        decoded = self.codec.decode(tokens, num_samples, sample_rate=rate)
        return {DECODED_AUDIO: decoded[0], DECODED_SAMPLE_RATE: np.array([rate], dtype=np.int32)}


def _array(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _scalar(request, name):
    array = _array(request, name)
    if array is None:
        return None
    if array.size != 1:
        raise InputSpecError(f"{name!r} holds {array.size} values; send one")
    return int(array.reshape(-1)[0])


def _bls_graph(model_name: str, input_spec, output_name: str):
    """A graph call (``[B, ...]`` array -> ``[B, ...]`` array) that runs ``model_name`` through BLS,
    its output in CPU memory."""

    def call(array: np.ndarray) -> np.ndarray:
        response = pb_utils.InferenceRequest(
            model_name=model_name, requested_output_names=[output_name],
            inputs=[pb_utils.Tensor(input_spec.name, np.ascontiguousarray(array, dtype=input_spec.dtype))],
            preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)).exec()
        if response.has_error():
            raise BackendError(f"the Triton model {model_name!r} failed: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, output_name).as_numpy()

    return call
