"""Datasets: preparation into Parquet shards, and reading them for training."""
