"""Dense matrix-multiply throughput per dtype, checked against a float64 reference.

A square n x n x n product is 2 n^3 floating-point operations. Inputs are seeded random
normals (never zeros); each sample times enough back-to-back products to last ~50 ms; the
reported rate is the best sample, with the median and the range beside it.
"""

from dataclasses import asdict, dataclass

import torch

from gpulab.probe.peaks import DevicePeak, percent_of
from gpulab.runtime.precision import set_tf32
from gpulab.runtime.timing import seconds_per_call

GPU_DTYPES = ("fp32", "tf32", "fp16", "bf16", "fp8")
CPU_DTYPES = ("fp32", "bf16")
TORCH_DTYPE = {
    "fp32": torch.float32,
    "tf32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
# Relative error ||C - C64|| / ||C64|| allowed on a checked slice: far above rounding for each
# format, far below what a wrong kernel gives (~1).
TOLERANCE = {"fp32": 1e-4, "tf32": 5e-3, "fp16": 5e-3, "bf16": 2e-2, "fp8": 1e-1}
SAMPLE_S = 0.05


@dataclass
class MatmulResult:
    dtype: str
    n: int
    tflops_best: float
    tflops_median: float
    tflops_min: float
    samples: int
    rel_error: float
    check_passed: bool
    peak_tflops: float | None
    pct_of_peak: float | None
    threads: int | None  # CPU threads (None on accelerators)

    def as_dict(self) -> dict:
        return asdict(self)


def fp8_supported(device: torch.device) -> bool:
    return (
        device.type == "cuda"
        and hasattr(torch, "float8_e4m3fn")
        and hasattr(torch, "_scaled_mm")
        and torch.cuda.get_device_capability(device) >= (8, 9)
    )


def _operands(n: int, dtype: str, device: torch.device):
    """Seeded random A (n x n) and B (n x n) in the probed format, plus float32 copies."""
    g = torch.Generator(device=device).manual_seed(n)
    a32 = torch.randn(n, n, device=device, generator=g)
    b32 = torch.randn(n, n, device=device, generator=g)
    if dtype == "fp8":
        a = a32.to(torch.float8_e4m3fn)
        b = b32.t().contiguous().to(torch.float8_e4m3fn).t()  # _scaled_mm wants B column-major
    else:
        a, b = a32.to(TORCH_DTYPE[dtype]), b32.to(TORCH_DTYPE[dtype])
    return a, b


def _product(dtype: str, device: torch.device):
    if dtype == "fp8":
        one = torch.ones((), device=device)
        return lambda a, b: torch._scaled_mm(
            a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16
        )
    return torch.matmul


def _rel_error(a, b, product, rows: int = 64) -> float:
    """Check a slice of the product against float64 on the same (already rounded) inputs."""
    got = product(a[:rows], b)[:, :rows].float().double().cpu()
    ref = a[:rows].float().double().cpu() @ b[:, :rows].float().double().cpu()
    return float((got - ref).norm() / ref.norm())


def matmul_rate(
    device: torch.device, dtype: str, n: int, samples: int, peak: DevicePeak | None
) -> MatmulResult:
    """Throughput of one dtype at one size; TF32 is switched on only for `tf32`."""
    set_tf32(dtype == "tf32")
    try:
        a, b = _operands(n, dtype, device)
        product = _product(dtype, device)
        product(a, b)  # warm-up: library load, kernel selection
        seconds = sorted(seconds_per_call(lambda: product(a, b), device, samples, SAMPLE_S))
        err = _rel_error(a, b, product)
    finally:
        set_tf32(False)
    flop = 2.0 * n**3
    best, median = flop / seconds[0] / 1e12, flop / seconds[len(seconds) // 2] / 1e12
    peak_tflops = peak.tflops.get(dtype) if peak and device.type == "cuda" else None
    return MatmulResult(
        dtype=dtype,
        n=n,
        tflops_best=best,
        tflops_median=median,
        tflops_min=flop / seconds[-1] / 1e12,
        samples=len(seconds),
        rel_error=err,
        check_passed=err <= TOLERANCE[dtype],
        peak_tflops=peak_tflops,
        pct_of_peak=percent_of(best, peak_tflops),
        threads=torch.get_num_threads() if device.type == "cpu" else None,
    )


def probe_compute(
    device: torch.device, sizes: list[int], samples: int, peak: DevicePeak | None, progress=None
) -> dict:
    """Every dtype the device runs, at every size; a size that does not fit is skipped."""
    dtypes = CPU_DTYPES if device.type == "cpu" else GPU_DTYPES  # MPS: the GPU list, filtered
    results, skipped = [], []
    for dtype in dtypes:
        reason = _unsupported(dtype, device)
        if reason:
            skipped.append({"dtype": dtype, "reason": reason})
            continue
        for n in sizes:
            if progress:
                progress(f"compute: {dtype} {n}x{n}x{n}")
            try:
                results.append(matmul_rate(device, dtype, n, samples, peak).as_dict())
            except torch.cuda.OutOfMemoryError:
                skipped.append({"dtype": dtype, "n": n, "reason": "out of device memory"})
                torch.cuda.empty_cache()
    return {"device": str(device), "results": results, "skipped": skipped}


def _unsupported(dtype: str, device: torch.device) -> str | None:
    if device.type != "cuda":
        return "measured on NVIDIA GPUs only" if dtype in ("tf32", "fp8") else None
    if dtype == "fp8" and not fp8_supported(device):
        return "fp8 matrix units need compute capability 8.9 or newer"
    if dtype == "tf32" and torch.cuda.get_device_capability(device) < (8, 0):
        return "TF32 needs compute capability 8.0 or newer"
    if dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "bf16 is not supported on this GPU"
    return None


def best_by_dtype(compute: dict) -> dict[str, dict]:
    """The fastest checked result of each dtype (the headline figure)."""
    best: dict[str, dict] = {}
    for r in compute["results"]:
        if r["check_passed"] and r["tflops_best"] > best.get(r["dtype"], {}).get("tflops_best", 0):
            best[r["dtype"]] = r
    return best
