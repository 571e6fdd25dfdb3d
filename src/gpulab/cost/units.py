"""Units of real work per workload: what "one unit" is, how many samples it holds, and how its
time follows from what the bench measured. Data, not logic: each row names its source.

A throughput unit's time is extrapolated: samples / measured samples/s. A time-to-quality unit's
time is measured: the bench's time to the quality target, evaluations included.
"""

from dataclasses import dataclass

MEASURED = "measured"
EXTRAPOLATED = "extrapolated"


@dataclass(frozen=True)
class Unit:
    workload: str
    name: str
    mode: str  # the bench row it needs: "throughput" or "quality"
    samples: int | None  # samples in one unit; None for a time-to-quality unit
    source: str
    quick_caveat: str | None = None  # how a --quick bench's settings differ from the unit's

    @property
    def basis(self) -> str:
        return MEASURED if self.mode == "quality" else EXTRAPOLATED

    def how(self) -> str:
        if self.samples is None:
            return "measured time to the quality target (evaluations included)"
        return f"{self.samples:,} samples / measured samples/s"


# stocks: 41,266 minutes in the study's data_stocks.csv; the first int(0.8 x 41,266) = 33,012
# train; batches of 256, the last partial batch dropped: 128 x 256 = 32,768 samples an epoch.
UNITS: dict[str, Unit] = {
    u.workload: u
    for u in (
        Unit(
            "stocks", "one 10-epoch training on the real data set", "throughput", 10 * 32_768,
            "data_stocks.csv has 41,266 minutes; 80 % train (33,012 rows), 128 full batches of "
            "256 an epoch (workloads/stocks/config.py)",
        ),
        Unit(
            "style", "10,000 images through feed-forward style training", "throughput", 10_000,
            "the study's unit: 10,000 images (500 h on a CPU VM, 11 h on a GPU VM); the bench "
            "measures images/s of the style network's training at 256 px (the study's per-image "
            "optimisation is `gpulab stylize`, not benched)",
            quick_caveat="--quick trains at 128 px; the unit's 256 px costs about 4x the "
            "compute per image",
        ),
        Unit(
            "cnn", "one ImageNet epoch (ResNet-50, 224 px)", "throughput", 1_281_167,
            "ILSVRC-2012 training set: 1,281,167 images",
            quick_caveat="--quick measures ResNet-18 at 64 px (debug preset), far cheaper per "
            "image than ResNet-50 at 224 px; run `gpulab bench cnn --full` for this unit",
        ),
        Unit(
            "digits", "one training to the accuracy target", "quality", None,
            "time-to-quality row of the bench (bundled digits, target 0.97 test accuracy)",
        ),
        Unit(
            "caption", "one epoch of COCO captions", "throughput", 414_113,
            "COCO 2014 train captions: 414,113 (image, caption) pairs, one sample each "
            "(workloads/caption/data.py CaptionPairs)",
            quick_caveat="--quick trains on 300 generated scenes held in memory at the default "
            "sizes; COCO images read from disk may feed the model slower",
        ),
    )
}  # fmt: skip
