"""gpulab: real deep-learning workloads on any accelerator, measured honestly."""

__version__ = "0.1.0"
