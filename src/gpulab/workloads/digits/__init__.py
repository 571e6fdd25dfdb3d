"""The MNIST demo: a small CNN on handwritten digits."""
