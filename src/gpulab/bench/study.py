"""What the study gpulab starts from reported, kept as data with its source."""

from dataclasses import dataclass

SOURCE = (
    "the CPU-only vs GPU virtual-machine study gpulab starts from (figures as reported there; "
    "its hardware and settings differ from any machine gpulab runs on)"
)


@dataclass(frozen=True)
class StudyFigure:
    workload: str
    gpu_speedup: float  # GPU time / CPU time as reported
    note: str


STUDY = {
    "stocks": StudyFigure("stocks", 3.0, "S&P 500 stock-prediction network: ~3x reported"),
    "style": StudyFigure("style", 500 / 11, "style transfer of 10,000 images: 500 h vs 11 h"),
}
