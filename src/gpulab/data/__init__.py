"""Shared input pipeline: how batches reach the training loop."""

from gpulab.data.batches import Batches, LoaderBatches, TensorBatches

__all__ = ["Batches", "LoaderBatches", "TensorBatches"]
