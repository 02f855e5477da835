#!/usr/bin/env python3
"""Writes the table-batched embedding cases (tbe.safetensors) from fbgemm_gpu's own CPU
operators, in an environment of their own (fbgemm-gpu-cpu loads against torch 2.14.1):

    python3 -m venv .venv-fbgemm && .venv-fbgemm/bin/pip install -r tests/reference/requirements-fbgemm.txt
    .venv-fbgemm/bin/python tests/reference/make_tbe_cases.py

The op `tbe_forward` is documented in tests/reference/OPS.md. Every expected value and
refusal comes from `SplitTableBatchedEmbeddingBagsCodegen` (CPU, FP32 weights, bounds
checks FATAL: its default mode replaces a bad index by row 0, this library refuses it),
except where FBGEMM cannot take the case: dims that are not multiples of 4 (FBGEMM asserts
on them) come from torch.nn.functional.embedding_bag per feature, unpooled rows from
torch.nn.functional.embedding (fbgemm_gpu 1.9.0's CPU operator refuses PoolingMode.NONE),
and the refusal of weighted mean pooling from PyTorch's (FBGEMM's CPU and GPU kernels
disagree on it).
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

import fbgemm_gpu  # noqa: F401  (registers the operators)
from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode, EmbeddingLocation as InferenceLocation, PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_inference import IntNBitTableBatchedEmbeddingBagsCodegen
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (  # noqa: E402
    ComputeDevice,
    DenseTableBatchedEmbeddingBagsCodegen,
    EmbeddingLocation,
    SplitTableBatchedEmbeddingBagsCodegen,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from casefile import CaseFile  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
VERSIONS = {"torch": torch.__version__, "fbgemm_gpu": fbgemm_gpu.__version__}
MODES = {"sum": PoolingMode.SUM, "mean": PoolingMode.MEAN, "none": PoolingMode.NONE}


def params(specs, feature_table_map, pooling, batch_size_per_feature_per_rank=None):
    out = {"embedding_specs": [list(s) for s in specs], "feature_table_map": list(feature_table_map), "pooling_mode": pooling}
    if batch_size_per_feature_per_rank is not None:
        out["batch_size_per_feature_per_rank"] = batch_size_per_feature_per_rank
    return out


def load_tables(m, weights, specs):
    """Sets the tables of FBGEMM's training TBE `m` to `weights` (every table flat)."""
    with torch.no_grad():
        start = 0
        for table, (rows, dim) in zip(m.split_embedding_weights(), specs):
            table.copy_(weights[start : start + rows * dim].view(rows, dim))
            start += rows * dim


def fbgemm(specs, feature_table_map, pooling, batch_size_per_feature_per_rank=None):
    """The forward of FBGEMM's training TBE on CPU, its tables set to `weights` (flat),
    with variable batch sizes (VBE) when `batch_size_per_feature_per_rank` is given."""
    vbe = {} if batch_size_per_feature_per_rank is None else {"batch_size_per_feature_per_rank": batch_size_per_feature_per_rank}

    def run(weights, indices, offsets, per_sample_weights=None):
        m = SplitTableBatchedEmbeddingBagsCodegen(
            embedding_specs=[(rows, dim, EmbeddingLocation.HOST, ComputeDevice.CPU) for rows, dim in specs],
            feature_table_map=list(feature_table_map),
            pooling_mode=MODES[pooling],
            weights_precision=SparseType.FP32,
            optimizer=EmbOptimType.EXACT_SGD,
            learning_rate=0.0,
            bounds_check_mode=BoundsCheckMode.FATAL,
        )
        load_tables(m, weights, specs)
        return {"out": m(indices, offsets, per_sample_weights=per_sample_weights, **vbe)}

    return run


PRECISIONS = {"fp32": SparseType.FP32, "fp16": SparseType.FP16, "int8": SparseType.INT8, "int4": SparseType.INT4}


def inference_rows(w, precision):
    """Table `w` (float32 [rows, dim]) as FBGEMM's inference TBE stores it, as
    (data, scale_bias) for its assign_embedding_weights and as the rows' bytes of the
    case (FBGEMM's row: the f16 scale and bias first, then the codes). Int rows are
    quantized by FBGEMM's own FloatToFusedNBitRowwiseQuantizedSBHalf, which puts the
    scale and bias at the row's end."""
    if precision in ("int8", "int4"):
        fused = torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf(w, 8 if precision == "int8" else 4)
        data, scale_bias = fused[:, :-4].contiguous(), fused[:, -4:].contiguous()
        return (data, scale_bias), torch.cat([scale_bias, data], 1).flatten().numpy()
    data = (w.half() if precision == "fp16" else w).contiguous().view(torch.uint8).view(w.shape[0], -1)
    return (data, None), data.flatten().numpy()


def fbgemm_inference(specs, feature_table_map, pooling, precisions, tables):
    """The forward of FBGEMM's inference TBE (IntNBitTableBatchedEmbeddingBagsCodegen,
    CPU, f32 output) over `tables` (each as inference_rows gives it)."""

    def run(weights, indices, offsets, per_sample_weights=None):
        m = IntNBitTableBatchedEmbeddingBagsCodegen(
            embedding_specs=[(f"t{t}", rows, dim, PRECISIONS[p], InferenceLocation.HOST) for t, ((rows, dim), p) in enumerate(zip(specs, precisions))],
            feature_table_map=list(feature_table_map),
            pooling_mode=MODES[pooling],
            output_dtype=SparseType.FP32,
            device="cpu",
        )
        m.initialize_weights()
        m.assign_embedding_weights(tables)
        return {"out": m(indices.int(), offsets.int(), per_sample_weights)}

    return run


def torch_per_feature(specs, feature_table_map, pooling):
    """The same semantics from torch.nn.functional.embedding_bag, one call per feature."""

    def run(weights, indices, offsets, per_sample_weights=None):
        firsts = np.cumsum([0] + [r * d for r, d in specs])
        nf = len(feature_table_map)
        b = (len(offsets) - 1) // nf
        outs = []
        for f, t in enumerate(feature_table_map):
            rows, dim = specs[t]
            table = weights[firsts[t] : firsts[t] + rows * dim].view(rows, dim)
            lo, hi = int(offsets[f * b]), int(offsets[(f + 1) * b])
            w = None if per_sample_weights is None else per_sample_weights[lo:hi]
            outs.append(F.embedding_bag(indices[lo:hi], table, offsets[f * b : (f + 1) * b] - lo, mode=pooling, per_sample_weights=w))
        return {"out": torch.cat(outs, dim=1)}

    return run


def torch_sequence(specs, feature_table_map, dim):
    """No pooling: each index's row from torch.nn.functional.embedding, in index order:
    [N, dim] when every feature has `dim`, else (dim None) the rows flat."""

    def run(weights, indices, offsets):
        firsts = np.cumsum([0] + [r * d for r, d in specs])
        b = (len(offsets) - 1) // len(feature_table_map)
        rows = []
        for bag in range(len(offsets) - 1):
            num_rows, width = specs[feature_table_map[bag // b]]
            t = feature_table_map[bag // b]
            table = weights[firsts[t] : firsts[t] + num_rows * width].view(num_rows, width)
            rows.append(F.embedding(indices[int(offsets[bag]) : int(offsets[bag + 1])], table).flatten())
        flat = torch.cat(rows)
        return {"out": flat if dim is None else flat.view(-1, dim)}

    return run


def bags(f, nf, b, specs, feature_table_map, mean_len, empty_every=0):
    """Random bags, feature-major: (indices, offsets) with some empty bags; `b` bags per
    feature, or `b[feat]` (variable batch sizes)."""
    idx, offsets = [], [0]
    for feat in range(nf):
        rows = specs[feature_table_map[feat]][0]
        for bag in range(b[feat] if isinstance(b, list) else b):
            n = 0 if empty_every and (len(offsets) - 1) % empty_every == 0 else int(f.rng.integers(1, 2 * mean_len))
            idx.extend(f.rng.integers(0, rows, size=n).tolist())
            offsets.append(len(idx))
    return np.array(idx, np.int64), np.array(offsets, np.int64)


def weights_of(f, specs):
    return np.concatenate([f.randn(r, d).ravel() for r, d in specs])


def tbe_cases(f):
    specs, ftm = [(50, 8), (30, 16), (100, 4)], [0, 1, 0, 2]
    for pooling in ["sum", "mean"]:
        idx, off = bags(f, 4, 6, specs, ftm, 4, empty_every=5)
        inputs = {"weights": weights_of(f, specs), "indices": idx, "offsets": off}
        f.add(f"tbe_{pooling}_mixed_dims_shared_table", "tbe_forward", params(specs, ftm, pooling), inputs, fbgemm(specs, ftm, pooling))
    idx, off = bags(f, 4, 6, specs, ftm, 4, empty_every=7)
    inputs = {"weights": weights_of(f, specs), "indices": idx, "offsets": off, "per_sample_weights": f.randn(len(idx))}
    f.add("tbe_sum_per_sample_weights", "tbe_forward", params(specs, ftm, "sum"), inputs, fbgemm(specs, ftm, "sum"))
    # FBGEMM's bench shape, scaled to the committed files' budget: T = 8 tables of
    # 256 x 32, B = 64, L ~ 20.
    big, big_ftm = [(256, 32)] * 8, list(range(8))
    idx, off = bags(f, 8, 64, big, big_ftm, 20)
    f.add("tbe_sum_8_tables", "tbe_forward", params(big, big_ftm, "sum"), {"weights": weights_of(f, big), "indices": idx, "offsets": off}, fbgemm(big, big_ftm, "sum"))
    # No pooling: FBGEMM's sequence embeddings ([N, D], one dim for all), and rows of
    # several dims flat. From torch: fbgemm_gpu 1.9.0's CPU TBE refuses PoolingMode.NONE
    # ("Index 3 is out of bounds: 2, range 0 to -50" for any valid input).
    seq, seq_ftm = [(50, 8), (30, 8)], [0, 1, 0]
    idx, off = bags(f, 3, 4, seq, seq_ftm, 3, empty_every=5)
    f.add("tbe_none_sequence", "tbe_forward", params(seq, seq_ftm, "none"), {"weights": weights_of(f, seq), "indices": idx, "offsets": off}, torch_sequence(seq, seq_ftm, 8), 0, 0)
    mixed, mixed_ftm = [(50, 8), (30, 3)], [0, 1, 0]
    idx, off = bags(f, 3, 4, mixed, mixed_ftm, 3, empty_every=5)
    f.add("tbe_none_mixed_dims", "tbe_forward", params(mixed, mixed_ftm, "none"), {"weights": weights_of(f, mixed), "indices": idx, "offsets": off}, torch_sequence(mixed, mixed_ftm, None), 0, 0)
    # Dims that are not multiples of 4: FBGEMM asserts on them; torch per feature.
    odd, odd_ftm = [(40, 3), (25, 7), (60, 1)], [2, 0, 1, 0]
    idx, off = bags(f, 4, 5, odd, odd_ftm, 3, empty_every=6)
    f.add("tbe_sum_odd_dims", "tbe_forward", params(odd, odd_ftm, "sum"), {"weights": weights_of(f, odd), "indices": idx, "offsets": off}, torch_per_feature(odd, odd_ftm, "sum"))
    # Refusals.
    small, small_ftm = [(10, 4), (6, 8)], [0, 1]
    w = weights_of(f, small)
    bad = {"weights": w, "indices": np.array([1, 10, 2, 3], np.int64), "offsets": np.array([0, 1, 2, 3, 4], np.int64)}
    f.add("err_tbe_index_too_large", "tbe_forward", params(small, small_ftm, "sum"), bad, fbgemm(small, small_ftm, "sum"), error=True)
    bad = {"weights": w, "indices": np.array([1, 0, 2, -1], np.int64), "offsets": np.array([0, 1, 2, 3, 4], np.int64)}
    f.add("err_tbe_index_negative", "tbe_forward", params(small, small_ftm, "sum"), bad, fbgemm(small, small_ftm, "sum"), error=True)
    bad = {"weights": w, "indices": np.array([1, 0, 2, 3], np.int64), "offsets": np.array([0, 1, 2, 4], np.int64)}
    f.add("err_tbe_offsets_length", "tbe_forward", params(small, small_ftm, "sum"), bad, fbgemm(small, small_ftm, "sum"), error=True)
    bad = {"weights": w, "indices": np.array([1, 0, 2, 3], np.int64), "offsets": np.array([0, 2, 1, 3, 4], np.int64)}
    f.add("err_tbe_offsets_decrease", "tbe_forward", params(small, small_ftm, "sum"), bad, fbgemm(small, small_ftm, "sum"), error=True)
    psw = {"weights": w, "indices": np.array([1, 0, 2, 3], np.int64), "offsets": np.array([0, 1, 2, 3, 4], np.int64), "per_sample_weights": f.randn(4)}
    f.add("err_tbe_weighted_mean", "tbe_forward", params(small, small_ftm, "mean"), psw, torch_per_feature(small, small_ftm, "mean"), error=True)
    # Variable batch size per feature (VBE), FBGEMM's output: rank after rank, each
    # feature's bags of that rank in turn. A feature with no bags on a rank, one shared
    # table, sum (weighted too) and mean.
    vbe, vbe_ftm = [(40, 8), (25, 12), (60, 4)], [0, 1, 0, 2]
    sizes = [[3, 1], [0, 2], [2, 4], [1, 1]]
    per_feature = [sum(r) for r in sizes]
    for pooling, weighted in [("sum", False), ("sum", True), ("mean", False)]:
        idx, off = bags(f, 4, per_feature, vbe, vbe_ftm, 3, empty_every=4)
        inputs = {"weights": weights_of(f, vbe), "indices": idx, "offsets": off}
        if weighted:
            inputs["per_sample_weights"] = f.randn(len(idx))
        name = f"tbe_vbe_{pooling}{'_per_sample_weights' if weighted else ''}"
        f.add(name, "tbe_forward", params(vbe, vbe_ftm, pooling, sizes), inputs, fbgemm(vbe, vbe_ftm, pooling, sizes))
    idx, off = bags(f, 4, per_feature, vbe, vbe_ftm, 3)
    bad = {"weights": weights_of(f, vbe), "indices": idx, "offsets": off[:-1]}
    # Inference tables of mixed precision (FBGEMM's IntN TBE): fp32, fp16, int8 and int4
    # rows in one layer, a shared int8 table; sum, weighted sum and mean.
    qspecs, qftm, precisions = [(40, 16), (30, 8), (50, 12), (20, 4)], [2, 0, 1, 2, 3], ["int8", "int4", "fp16", "fp32"]
    for pooling, weighted in [("sum", False), ("sum", True), ("mean", False)]:
        rows = [inference_rows(torch.from_numpy(f.randn(r, d)), p) for (r, d), p in zip(qspecs, precisions)]
        idx, off = bags(f, 5, 6, qspecs, qftm, 4, empty_every=5)
        inputs = {"weights": np.concatenate([b for _, b in rows]), "indices": idx, "offsets": off}
        if weighted:
            inputs["per_sample_weights"] = f.randn(len(idx))
        q = params(qspecs, qftm, pooling)
        q["weights_precision"] = precisions
        name = f"tbe_mixed_precision_{pooling}{'_per_sample_weights' if weighted else ''}"
        f.add(name, "tbe_forward", q, inputs, fbgemm_inference(qspecs, qftm, pooling, precisions, [t for t, _ in rows]))
    f.add("err_tbe_vbe_offsets_length", "tbe_forward", params(vbe, vbe_ftm, "sum", sizes), bad, fbgemm(vbe, vbe_ftm, "sum", sizes), error=True)


FBGEMM_OPTIMIZERS = {
    "exact_sgd": EmbOptimType.EXACT_SGD,
    "exact_adagrad": EmbOptimType.EXACT_ADAGRAD,
    "exact_rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
}


def fbgemm_training(specs, feature_table_map, pooling, optimizer, lr=0.0, eps=1e-8, batch_size_per_feature_per_rank=None):
    """`steps` forward + backward passes of FBGEMM's training TBE on CPU with its fused
    optimizer (EXACT_SGD, EXACT_ADAGRAD, EXACT_ROWWISE_ADAGRAD), one batch, one output
    gradient per step: the tables after the steps, and the optimizer's state
    (`momentum1`)."""

    def run(weights, indices, offsets, grad_out, per_sample_weights=None):
        extra = {} if optimizer == "exact_sgd" else {"eps": eps}
        m = SplitTableBatchedEmbeddingBagsCodegen(
            embedding_specs=[(rows, dim, EmbeddingLocation.HOST, ComputeDevice.CPU) for rows, dim in specs],
            feature_table_map=list(feature_table_map),
            pooling_mode=MODES[pooling],
            weights_precision=SparseType.FP32,
            optimizer=FBGEMM_OPTIMIZERS[optimizer],
            learning_rate=lr,
            bounds_check_mode=BoundsCheckMode.FATAL,
            **extra,
        )
        load_tables(m, weights, specs)
        vbe = {} if batch_size_per_feature_per_rank is None else {"batch_size_per_feature_per_rank": batch_size_per_feature_per_rank}
        for g in grad_out:
            m(indices, offsets, per_sample_weights=per_sample_weights, **vbe).backward(g)
        out = {"weights": torch.cat([t.detach().flatten() for t in m.split_embedding_weights()])}
        if optimizer != "exact_sgd":
            out["momentum1"] = torch.cat([s[0].flatten() for s in m.split_optimizer_states()])
        return out

    return run


def numpy_fbgemm(specs, feature_table_map, pooling, optimizer, lr, beta1, beta2, eps, weight_decay):
    """FBGEMM's ADAM and PARTIAL_ROWWISE_ADAM, whose CPU kernels fbgemm_gpu lacks, and
    EXACT_ROWWISE_ADAGRAD with weight decay in mode L2 (fbgemm_gpu 1.9.0's CPU kernel
    gives other values for the rows of tables that no other feature shares), in float32
    NumPy after their CUDA updates (codegen/genscript/optimizers.py): each step, the rows
    present in the batch take the dense TBE gradient (from fbgemm_gpu's
    DenseTableBatchedEmbeddingBagsCodegen), with `iter` the global step count; the other
    rows and their states are left alone."""
    rowwise = optimizer == "partial_rowwise_adam"
    f32 = np.float32

    def run(weights, indices, offsets, grad_out, per_sample_weights=None):
        d = specs[0][1]
        w = weights.numpy().astype(f32).reshape(-1, d).copy()
        m1 = np.zeros(len(w), f32) if optimizer == "exact_rowwise_adagrad" else np.zeros_like(w)
        m2 = np.zeros(len(w), f32) if rowwise else np.zeros_like(w)
        firsts = np.cumsum([0] + [r for r, _ in specs])
        nb = (len(offsets) - 1) // len(feature_table_map)
        present = set()
        for bag in range(len(offsets) - 1):
            for p in range(int(offsets[bag]), int(offsets[bag + 1])):
                present.add(int(firsts[feature_table_map[bag // nb]]) + int(indices[p]))
        rows = np.array(sorted(present), np.int64)
        b1, b2, lr_, eps_, wd = f32(beta1), f32(beta2), f32(lr), f32(eps), f32(weight_decay)
        dense = fbgemm_dense_grad(specs, feature_table_map, pooling)
        for it, g in enumerate(grad_out, start=1):
            grad = dense(torch.from_numpy(w.ravel().copy()), indices, offsets, g, per_sample_weights)["grad_weights"]
            grad = grad.numpy().astype(f32).reshape(-1, d)[rows]
            if optimizer == "exact_rowwise_adagrad":
                decayed = grad + wd * w[rows]
                m1[rows] = m1[rows] + (decayed * decayed).sum(axis=1, dtype=f32) / f32(d)
                multiplier = (lr_ / (np.sqrt(m1[rows]) + eps_))[:, None]
                w[rows] = (f32(1.0) - multiplier * wd) * w[rows] - grad * multiplier
                continue
            bc1, bc2 = f32(1.0 - beta1**it), f32(1.0 - beta2**it)
            m1[rows] = m1[rows] * b1 + grad * (f32(1.0) - b1)
            if rowwise:
                m2[rows] = (grad * grad).sum(axis=1, dtype=f32) / f32(d) * (f32(1.0) - b2) + m2[rows] * b2
                denom = (np.sqrt(m2[rows] / bc2) + eps_)[:, None]
            else:
                m2[rows] = m2[rows] * b2 + (grad * grad) * (f32(1.0) - b2)
                denom = np.sqrt(m2[rows] / bc2) + eps_
            w[rows] = w[rows] - lr_ * (m1[rows] / bc1 / denom + wd * w[rows])
        out = {"weights": torch.from_numpy(w.ravel()), "momentum1": torch.from_numpy(m1.ravel())}
        if optimizer != "exact_rowwise_adagrad":
            out["momentum2"] = torch.from_numpy(m2.ravel())
        return out

    return run


def fbgemm_dense_grad(specs, feature_table_map, pooling):
    """The gradient of FBGEMM's dense TBE (`DenseTableBatchedEmbeddingBagsCodegen`, CPU):
    `weights.grad`, every table flat, one after another."""

    def run(weights, indices, offsets, grad_out, per_sample_weights=None):
        m = DenseTableBatchedEmbeddingBagsCodegen(embedding_specs=list(specs), feature_table_map=list(feature_table_map), pooling_mode=MODES[pooling], use_cpu=True)
        with torch.no_grad():
            m.weights.copy_(weights)
        m(indices, offsets, per_sample_weights=per_sample_weights).backward(grad_out)
        return {"grad_weights": m.weights.grad}

    return run


def training_params(specs, ftm, pooling, optimizer, **hyper):
    return {**params(specs, ftm, pooling), "optimizer": optimizer, **hyper}


def tbe_training_cases(f):
    # Features sharing a table are adjacent in feature_table_map: fbgemm_gpu's CPU backward
    # merges a table's features only when they are (with [0, 1, 0, 2] it updates the rows
    # that features 0 and 2 share once per feature); its GPU backward linearizes every
    # index by its table's offset and merges them in any order, as this library does.
    specs, ftm = [(40, 8), (30, 8), (60, 8)], [0, 0, 1, 2]
    b = 6

    def add_grad(cid, pooling, weighted=False, error=False, grad_shape=None):
        idx, off = bags(f, 4, b, specs, ftm, 4, empty_every=5)
        width = sum(specs[t][1] for t in ftm)
        inputs = {"weights": weights_of(f, specs), "indices": idx, "offsets": off, "grad_out": f.randn(*(grad_shape or (b, width)))}
        if weighted:
            inputs["per_sample_weights"] = f.randn(len(idx))
        f.add(cid, "tbe_backward", params(specs, ftm, pooling), inputs, fbgemm_dense_grad(specs, ftm, pooling), 1e-5, 1e-5, error=error)

    add_grad("tbe_bw_sum_shared_table", "sum")
    add_grad("tbe_bw_mean", "mean")
    add_grad("tbe_bw_weighted_sum", "sum", weighted=True)
    add_grad("err_tbe_bw_grad_shape", "sum", error=True, grad_shape=(b, 31))

    def add_steps(cid, pooling, optimizer, steps=3, weighted=False, dims=8, **hyper):
        sp = [(r, dims) for r, _ in specs]
        idx, off = bags(f, 4, b, sp, ftm, 4, empty_every=6)
        width = dims * len(ftm)
        inputs = {"weights": weights_of(f, sp), "indices": idx, "offsets": off, "grad_out": f.randn(steps, b, width)}
        if weighted:
            inputs["per_sample_weights"] = f.randn(len(idx))
        p = training_params(sp, ftm, pooling, optimizer, **hyper)
        lr, eps, wd = hyper.get("learning_rate", 0.0), hyper.get("eps", 1e-8), hyper.get("weight_decay", 0.0)
        if optimizer in FBGEMM_OPTIMIZERS and not wd:
            run = fbgemm_training(sp, ftm, pooling, optimizer, lr, eps)
        else:
            run = numpy_fbgemm(sp, ftm, pooling, optimizer, lr, hyper.get("beta1", 0.9), hyper.get("beta2", 0.999), eps, wd)
        f.add(cid, "tbe_step", p, inputs, run, 1e-5, 1e-5)

    add_steps("tbe_exact_sgd", "sum", "exact_sgd", learning_rate=0.05)
    add_steps("tbe_exact_sgd_weighted", "sum", "exact_sgd", weighted=True, learning_rate=0.1)
    add_steps("tbe_exact_adagrad", "sum", "exact_adagrad", learning_rate=0.1, eps=1e-8)
    add_steps("tbe_exact_adagrad_mean", "mean", "exact_adagrad", learning_rate=0.05, eps=1e-6)
    add_steps("tbe_exact_rowwise_adagrad", "sum", "exact_rowwise_adagrad", learning_rate=0.1, eps=1e-8)
    add_steps("tbe_exact_rowwise_adagrad_mean_d16", "mean", "exact_rowwise_adagrad", dims=16, learning_rate=0.05, eps=1e-6)
    add_steps("tbe_exact_rowwise_adagrad_l2", "sum", "exact_rowwise_adagrad", weighted=True, learning_rate=0.1, eps=1e-8, weight_decay=0.05)
    # ADAM and PARTIAL_ROWWISE_ADAM: fbgemm_gpu has no CPU kernels for them; NumPy after
    # its CUDA updates (as for the row-wise Adagrad with L2 weight decay above).
    add_steps("tbe_adam", "sum", "adam", learning_rate=0.01, eps=1e-8, beta1=0.9, beta2=0.999)
    add_steps("tbe_adam_mean_weight_decay", "mean", "adam", dims=16, learning_rate=0.02, eps=1e-6, beta1=0.8, beta2=0.99, weight_decay=0.1)
    add_steps("tbe_partial_rowwise_adam", "sum", "partial_rowwise_adam", learning_rate=0.01, eps=1e-8, beta1=0.9, beta2=0.999)
    add_steps("tbe_partial_rowwise_adam_weighted", "sum", "partial_rowwise_adam", weighted=True, learning_rate=0.02, eps=1e-6, beta1=0.8, beta2=0.99, weight_decay=0.1)
    # Variable batch sizes (VBE): FBGEMM's training TBE with batch_size_per_feature_per_rank,
    # the output gradient flat in its rank-major layout.
    sizes = [[2, 3], [0, 4], [3, 1], [1, 2]]
    for cid, pooling, optimizer, hyper in [
        ("tbe_vbe_exact_sgd", "sum", "exact_sgd", {"learning_rate": 0.05}),
        ("tbe_vbe_exact_rowwise_adagrad_mean", "mean", "exact_rowwise_adagrad", {"learning_rate": 0.1, "eps": 1e-8}),
    ]:
        idx, off = bags(f, 4, [sum(r) for r in sizes], specs, ftm, 4, empty_every=5)
        total = sum(sum(r) for r in sizes) * 8
        inputs = {"weights": weights_of(f, specs), "indices": idx, "offsets": off, "grad_out": f.randn(3, total)}
        p = {**training_params(specs, ftm, pooling, optimizer, **hyper), "batch_size_per_feature_per_rank": sizes}
        run = fbgemm_training(specs, ftm, pooling, optimizer, hyper["learning_rate"], hyper.get("eps", 1e-8), sizes)
        f.add(cid, "tbe_step", p, inputs, run, 1e-5, 1e-5)


def main():
    f = CaseFile(seed=20261210, versions=VERSIONS, generator="tests/reference/make_tbe_cases.py")
    tbe_cases(f)
    f.save(os.path.join(HERE, "tbe.safetensors"), "table-batched embedding bags: fbgemm_gpu's CPU TBE forward")
    t = CaseFile(seed=20261211, versions=VERSIONS, generator="tests/reference/make_tbe_cases.py")
    tbe_training_cases(t)
    t.save(os.path.join(HERE, "tbe_training.safetensors"), "table-batched embedding bags' training: fbgemm_gpu's CPU TBE backward and fused optimizers")


if __name__ == "__main__":
    main()