"""Settings of the MNIST demo: the tutorial's batch and a short `debug` preset."""

from dataclasses import dataclass, replace

from gpulab.workloads.base import TrainConfig, require


@dataclass
class DigitsConfig(TrainConfig):
    epochs: int = 20
    batch_size: int = 50  # the tutorial's global batch [samples]
    lr: float = 1e-3  # Adam learning rate
    seed: int = 0
    eval_every: int = 20  # test accuracy points, for the time to the target [steps]
    warmup_steps: int = 5
    data: str | None = None  # a folder of MNIST IDX files; None: scikit-learn's bundled digits
    test_fraction: float = 0.2  # bundled digits only; MNIST has its own test files
    target_accuracy: float | None = None  # None: 0.97 on the bundled digits, 0.99 on MNIST

    def validate(self) -> None:
        super().validate()
        require(0 < self.test_fraction < 1, "test_fraction must lie strictly between 0 and 1")
        require(
            self.target_accuracy is None or 0 < self.target_accuracy <= 1,
            "target_accuracy must lie in (0, 1]",
        )


def default() -> DigitsConfig:
    return DigitsConfig()


def debug() -> DigitsConfig:
    return replace(default(), epochs=3, eval_every=10)
