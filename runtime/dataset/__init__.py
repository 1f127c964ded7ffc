"""Token datasets: ``meltok-rt tokenize`` (sources -> Parquet shards, on local workers or Ray), the reader
(``open_dataset``) and ``detokenize``. The folder layout and schema are documented in ``reader``.

``job`` runs a tokenize job, ``local_job``/``ray_job`` are its two engines, ``items`` is what each does
per item, ``sources`` finds the items, ``writer`` commits shards durably, ``decode`` is the way back.
"""
from meltok_runtime.dataset.reader import Dataset, DatasetItem, open_dataset
from meltok_runtime.errors import DatasetError

__all__ = ["Dataset", "DatasetError", "DatasetItem", "open_dataset"]
