"""Datasets: preparation into Parquet shards, and reading them for training.

Importing this package does not import Ray; the Ray Data datasets are in ``alae_ray.data.ray_reader``.
"""

from .layout import Manifest, Shard
from .prepare import PrepareOptions, prepare
from .reader import iter_level_batches, open_dataset, read_first_rows, read_level_numpy, to_tensor_batch, verify
from .sources import open_source
from .storage import DatasetError

__all__ = ["DatasetError", "Manifest", "PrepareOptions", "Shard", "iter_level_batches", "open_dataset",
           "open_source", "prepare", "read_first_rows", "read_level_numpy", "to_tensor_batch", "verify"]
