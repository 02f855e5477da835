#!/usr/bin/env python3
"""PyTorch's own layers at the shapes of examples/bench.rs, on the same GPU, for the
table beside ours (examples/gpu-bench.sh runs it after the bench when torch sees a CUDA
device). GB/s are counted as the bench counts them: table rows read plus output written
(bags: B x L rows read, B rows written; LayerNorm: input read plus output written; the
TBE shapes: output B x sum(D) plus weights B x sum(D) x L, FBGEMM's count). Each point is
the median of --reps CUDA-event timings after a warm-up.

    python3 examples/gpu-bench-torch.py [--device cuda] [--reps 20] [--out target/gpu-bench/torch.csv]
"""

import argparse
import csv
import os
import statistics

import torch
import torch.nn.functional as F


def timed(device, reps, fn):
    """Median milliseconds of `fn()` over `reps` runs after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            import time

            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default="target/gpu-bench/torch.csv")
    ap.add_argument("--budget-mib", type=int, default=32, help="bytes each timed call moves, as the bench's --budget-mib")
    args = ap.parse_args()
    dev, gen = args.device, torch.Generator(device="cpu").manual_seed(7)
    budget = args.budget_mib << 20
    rows_out = []

    def point(kernel, rows, dim, bag, nbytes, ms):
        rows_out.append({"kernel": kernel, "rows": rows, "dim": dim, "bag": bag, "bytes": nbytes, "ms": f"{ms:.4f}", "gbps": f"{nbytes / ms / 1e6:.2f}"})
        print(f"{kernel:28} rows={rows:>8} D={dim:>5} bag={bag:>4}: {ms:8.3f} ms  {nbytes / ms / 1e6:8.2f} GB/s")

    with torch.no_grad():
        # Lookups and bags (the bench's default grid), uniform indices.
        for rows in [1_000, 100_000]:
            for dim in [4, 16, 64, 256, 1024]:
                table = torch.randn(rows, dim, generator=gen).to(dev)
                n = max(1, budget // (8 * dim))
                idx = torch.randint(0, rows, (n,), generator=gen).to(dev)
                point("torch_embedding", rows, dim, 1, n * dim * 8, timed(dev, args.reps, lambda: F.embedding(idx, table)))
                bag = 20
                bags = max(1, budget // (4 * dim * (bag + 1)))
                bidx = torch.randint(0, rows, (bags * bag,), generator=gen).to(dev)
                offs = torch.arange(0, bags * bag, bag, device=dev)
                point("torch_embedding_bag_sum", rows, dim, bag, bags * dim * 4 * (bag + 1),
                      timed(dev, args.reps, lambda: F.embedding_bag(bidx, table, offs, mode="sum")))
        # LayerNorm over 100 000 rows.
        for dim in [64, 256]:
            x = torch.randn(100_000, dim, generator=gen).to(dev)
            ln = torch.nn.LayerNorm(dim).to(dev)
            point("torch_layer_norm", 100_000, dim, 0, x.numel() * 8, timed(dev, args.reps, lambda: ln(x)))
        # Table-batched bags at the bench's TBE shapes: one nn.EmbeddingBag per table, as
        # a PyTorch user without FBGEMM runs them.
        b, t, l, e = 512, 26, 20, 2_000
        for dim in [64, 128]:
            tables = [torch.randn(e, dim, generator=gen).to(dev) for _ in range(t)]
            ids = [torch.randint(0, e, (b * l,), generator=gen).to(dev) for _ in range(t)]
            offs = torch.arange(0, b * l, l, device=dev)
            point("torch_tbe_as_26_bags", e, dim, l, b * t * dim * 4 * (1 + l),
                  timed(dev, args.reps, lambda: torch.cat([F.embedding_bag(i, w, offs, mode="sum") for i, w in zip(ids, tables)], 1)))
        # Top-k retrieval: Q queries against a 100 000 x 128 table (bytes: the table).
        table = torch.randn(100_000, 128, generator=gen).to(dev)
        for q, k in [(1, 10), (16, 100), (128, 100)]:
            queries = torch.randn(q, 128, generator=gen).to(dev)
            point("torch_topk", 100_000, 128, k, table.numel() * 4, timed(dev, args.reps, lambda: torch.topk(queries @ table.T, k, dim=1)))

    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows_out[0]))
        w.writeheader()
        w.writerows(rows_out)
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {name}: {args.out}")


if __name__ == "__main__":
    main()
