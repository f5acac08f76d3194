"""Distributed training on Ray Train: the driver (``run``) and the worker loop (``worker``)."""
