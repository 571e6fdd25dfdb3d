"""Where a stocks training step's GPU time goes: optimizer variants, graph vs eager, kernels.

    PYTHONPATH=src python3 benchmarks/stocks_step_profile.py

Times 1,280 steps (10 epochs of the study's setting) of the bare step for each variant with CUDA
events, then prints the heaviest kernels of a profiled eager step. Prints one JSON line last.
"""

import json

import torch
import torch.nn.functional as F

from gpulab.runtime.precision import resolve_precision
from gpulab.workloads.stocks.model import StockMLP

METHOD_VERSION = 1
STEPS, BATCH, ROWS, FEATURES = 1280, 256, 33_012, 500


def make(fused: bool, capturable: bool):
    torch.manual_seed(0)
    model = StockMLP(FEATURES).cuda()
    opt = torch.optim.Adam(
        model.parameters(),
        lr=1e-3,
        fused=fused or None,
        capturable=capturable,
        foreach=None if fused else True,
    )
    return model, opt


def step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    loss = F.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return loss.detach()


def per_step_ms(body, steps: int = STEPS, calls: int | None = None) -> float:
    """Milliseconds per step of `calls` calls of body(i) covering `steps` steps, CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(calls or steps):
        body(i)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps


def capture(fn, opt) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Warm `fn` up on a side stream, then capture it; returns the graph and fn's output."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    opt.zero_grad(set_to_none=True)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    return g, out


def time_eager(fused: bool, X, Y, perm) -> float:
    model, opt = make(fused, capturable=False)
    for i in range(5):
        step(model, opt, X[perm[i]], Y[perm[i]])

    def body(i):
        idx = perm[i % len(perm)]
        step(model, opt, X[idx], Y[idx])

    return per_step_ms(body)


def time_graph(fused: bool, X, Y, perm, gather_into: bool) -> float:
    model, opt = make(fused, capturable=True)
    sx, sy = X[perm[0]].clone(), Y[perm[0]].clone()
    g, loss = capture(lambda: step(model, opt, sx, sy), opt)
    total = torch.zeros((), device="cuda")

    def body(i):
        idx = perm[i % len(perm)]
        if gather_into:
            torch.index_select(X, 0, idx, out=sx)
            torch.index_select(Y, 0, idx, out=sy)
        else:
            sx.copy_(X.index_select(0, idx))
            sy.copy_(Y.index_select(0, idx))
        g.replay()
        total.add_(loss)

    return per_step_ms(body)


def time_graph_variant(X, Y, perm, *, compiled=False, precision="fp32", steps_per_graph=1) -> float:
    """Graphed fused-Adam step with one change: torch.compile, precision, or K steps per graph."""
    resolve_precision(precision, torch.device("cuda"))
    model, opt = make(True, capturable=True)
    fwd = torch.compile(model) if compiled else model
    dtype = torch.bfloat16 if precision == "bf16" else None
    idx = perm[:steps_per_graph].clone()

    def k_steps():
        for k in range(steps_per_graph):
            x, y = X.index_select(0, idx[k]), Y.index_select(0, idx[k])
            opt.zero_grad(set_to_none=True)
            with torch.autocast(
                "cuda", dtype=dtype, enabled=dtype is not None, cache_enabled=False
            ):
                loss = F.mse_loss(fwd(x).float(), y)
            loss.backward()
            opt.step()
        return loss.detach()

    g, loss = capture(k_steps, opt)
    total = torch.zeros((), device="cuda")
    n = len(perm) // steps_per_graph

    def body(i):
        j = (i % n) * steps_per_graph
        idx.copy_(perm[j : j + steps_per_graph])
        g.replay()
        total.add_(loss)

    ms = per_step_ms(body, calls=STEPS // steps_per_graph)
    resolve_precision("fp32", torch.device("cuda"))
    return ms


def replay_only(fused: bool, X, Y, perm) -> float:
    model, opt = make(fused, capturable=True)
    sx, sy = X[perm[0]].clone(), Y[perm[0]].clone()
    g, _ = capture(lambda: step(model, opt, sx, sy), opt)
    return per_step_ms(lambda i: g.replay())


def kernel_table(fused: bool, X, Y, perm) -> str:
    from torch.profiler import ProfilerActivity, profile

    model, opt = make(fused, capturable=False)
    for i in range(5):
        step(model, opt, X[perm[i]], Y[perm[i]])
    torch.cuda.synchronize()
    with profile(
        activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True
    ) as prof:
        for i in range(20):
            step(model, opt, X[perm[i]], Y[perm[i]])
        torch.cuda.synchronize()
    return prof.key_averages(group_by_input_shape=True).table(
        sort_by="cuda_time_total",
        row_limit=25,
        max_name_column_width=30,
        max_shapes_column_width=60,
    )


def main() -> None:
    resolve_precision("fp32", torch.device("cuda"))
    g = torch.Generator(device="cuda").manual_seed(0)
    X = torch.rand(ROWS, FEATURES, device="cuda", generator=g) * 2 - 1
    Y = torch.rand(ROWS, device="cuda", generator=g) * 2 - 1
    perm = torch.randperm(ROWS, device="cuda", generator=g)[: (ROWS // BATCH) * BATCH].view(
        -1, BATCH
    )
    ms = {
        "eager_foreach": time_eager(False, X, Y, perm),
        "eager_fused": time_eager(True, X, Y, perm),
        "graph_foreach_copy": time_graph(False, X, Y, perm, gather_into=False),
        "graph_fused_copy": time_graph(True, X, Y, perm, gather_into=False),
        "graph_fused_gather_into": time_graph(True, X, Y, perm, gather_into=True),
        "replay_only_foreach": replay_only(False, X, Y, perm),
        "replay_only_fused": replay_only(True, X, Y, perm),
        "graph_k1_gather_inside": time_graph_variant(X, Y, perm),
        "graph_k8_gather_inside": time_graph_variant(X, Y, perm, steps_per_graph=8),
        "graph_tf32": time_graph_variant(X, Y, perm, precision="tf32"),
        "graph_bf16": time_graph_variant(X, Y, perm, precision="bf16"),
    }
    torch.backends.cuda.preferred_blas_library("cublaslt")
    ms["graph_cublaslt"] = time_graph_variant(X, Y, perm)
    torch.backends.cuda.preferred_blas_library("cublas")
    try:
        ms["graph_compiled"] = time_graph_variant(X, Y, perm, compiled=True)
    except Exception as e:
        print(f"compiled variant failed: {type(e).__name__}: {str(e)[:300]}")
    for name, v in ms.items():
        print(f"{name:<26} {v * 1e3:8.1f} us/step   {v * STEPS / 1e3:7.3f} s per 1,280 steps")
    print(kernel_table(True, X, Y, perm))
    print(
        json.dumps(
            {
                "benchmark": "stocks_step_profile",
                "method_version": METHOD_VERSION,
                "device": torch.cuda.get_device_name(),
                "ms_per_step": ms,
            }
        )
    )


if __name__ == "__main__":
    main()
