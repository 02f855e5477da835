#!/usr/bin/env python3
"""fbgemm_gpu's CPU TBE beside ours, at the bench's TBE shapes (B = 512, T = 26 tables of
E = 2 000 rows, L = 20, sum pooling, D = 64 and 128), on the same machine and in the same
run as `examples/bench.rs --sections tbe` (see fbgemm-tbe.sh, which runs both).

GB/s counted as FBGEMM's TBE bench counts them: output B·ΣD plus weights read B·ΣD·L, f32;
the training step (forward + backward with the fused EXACT_ROWWISE_ADAGRAD) twice that.
fbgemm's time is the median wall clock of its CPU operator on every core; ours is the
median of the bench's run (`gpu_gbps` of its results.csv, GPU timestamps on the adapter).

    python3 examples/peers/fbgemm_tbe.py --ours target/tbe-bench/results.csv --out examples/bench-results/peers-fbgemm.md
"""

import argparse
import csv
import statistics
import time

import numpy as np
import torch

import fbgemm_gpu  # noqa: F401  (registers the operators)
from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    ComputeDevice,
    EmbeddingLocation,
    SplitTableBatchedEmbeddingBagsCodegen,
)

B, T, L, E = 512, 26, 20, 2_000
# Ours: forward rows and the step row, by (dim, dist).
OURS = {
    "forward": "tbe_forward",
    "separate": "tbe_as_26_bag_calls",
    "step": "tbe_step_fused",
    "separate_step": "tbe_step_as_26_bag_backward_then_step",
}


def indices(rng, dist):
    """B·L ids per table: uniform, or Zipf with exponent 1.05 over the E rows (the bench's)."""
    if dist == "uniform":
        return rng.integers(0, E, size=B * L)
    weights = 1.0 / np.arange(1, E + 1) ** 1.05
    return rng.choice(E, size=B * L, p=weights / weights.sum())


def timed(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fbgemm_gbps(dim, dist, train, reps):
    m = SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[(E, dim, EmbeddingLocation.HOST, ComputeDevice.CPU)] * T,
        pooling_mode=PoolingMode.SUM,
        weights_precision=SparseType.FP32,
        optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=0.01,
        eps=1e-8,
    )
    rng = np.random.default_rng(dim)
    idx = torch.from_numpy(np.concatenate([indices(rng, dist) for _ in range(T)]).astype(np.int64))
    offsets = torch.arange(0, T * B * L + 1, L, dtype=torch.int64)
    grad = torch.full((B, T * dim), 0.01)
    if train:
        seconds = timed(lambda: m(idx, offsets).backward(grad), reps)
    else:
        with torch.no_grad():
            seconds = timed(lambda: m(idx, offsets), reps)
    return (2.0 if train else 1.0) * B * T * dim * 4 * (1 + L) / seconds / 1e9


def ours(path):
    rows = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            if r["kernel"].startswith("tbe_"):
                rows[(r["kernel"], int(r["dim"]), r["dist"])] = (float(r["gpu_gbps"]), float(r["copy_gbps"]))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", required=True, help="results.csv of `bench --sections tbe` run just before")
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args()
    rows = ours(args.ours)
    lines = [
        f"fbgemm_gpu {fbgemm_gpu.__version__} CPU TBE (torch {torch.__version__}, {torch.get_num_threads()} threads) beside ours in one run "
        f"(`bash examples/peers/fbgemm-tbe.sh`). B = {B}, T = {T} tables of {E} rows, L = {L}, sum pooling, f32; GB/s as FBGEMM's bench "
        "counts them (the step: forward + backward with the fused EXACT_ROWWISE_ADAGRAD, twice the forward's bytes).",
        "",
        "| op | D | ids | ours GB/s | ours / copy kernel | 26 separate calls of ours, GB/s | fbgemm CPU GB/s | ours / fbgemm CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for op, train, dists in [("forward", False, ["uniform", "zipf"]), ("step", True, ["zipf"])]:
        for dim in [64, 128]:
            for dist in dists:
                mine = rows.get((OURS[op], dim, dist))
                separate = rows.get((OURS["separate" if op == "forward" else "separate_step"], dim, dist))
                theirs = fbgemm_gbps(dim, dist, train, args.reps)
                if mine is None:
                    lines.append(f"| {op} | {dim} | {dist} | (not in {args.ours}) | | | {theirs:.2f} | |")
                    continue
                sep = f"{separate[0]:.2f}" if separate else ""
                lines.append(f"| {op} | {dim} | {dist} | {mine[0]:.2f} | {mine[0] / mine[1]:.2f} | {sep} | {theirs:.2f} | {mine[0] / theirs:.2f} |")
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
