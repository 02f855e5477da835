#!/usr/bin/env python3
"""Writes the repository's reference cases from the reference libraries themselves.

    python3 -m venv .venv && .venv/bin/pip install -r tests/reference/requirements.txt
    .venv/bin/python tests/reference/make_cases.py

Run by hand when an op or an edge case is added, never by CI: CI reads the committed
outputs, `tests/reference/forward.safetensors` and `tests/reference/training.safetensors`,
in the format of the conformance suite's FORMAT.md (`__metadata__["cases"]`, expected
values as `ID/expected/NAME`). Every expected value and every refusal comes from a call
into PyTorch, bitsandbytes or transformers; the only rule written out by hand is
FBGEMM's EXACT_ROWWISE_ADAGRAD (FBGEMM has no CPU wheel on PyPI), as FORMAT.md says.

The script fails when a case meant as a refusal is accepted by the reference, or the
other way round, so the committed files say what the libraries do.
"""
import json
import os
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore")
import bitsandbytes as bnb  # noqa: E402
import bitsandbytes.functional as bnbf  # noqa: E402
import transformers  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from casefile import CaseFile  # noqa: E402
from transformers.models.bert.modeling_bert import BertConfig, BertEmbeddings  # noqa: E402
from transformers.models.reformer.modeling_reformer import AxialPositionEmbeddings, ReformerConfig  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
VERSIONS = {"torch": torch.__version__, "bitsandbytes": bnb.__version__, "transformers": transformers.__version__}


def opt_norm(max_norm, norm_type=2.0):
    return {"max_norm": max_norm, "norm_type": norm_type}


# ---------------------------------------------------------------- forward ops


def embedding_cases(f):
    def emb(padding_idx=None, max_norm=None, norm_type=2.0):
        def run(weight, indices):
            w = weight.clone()
            out = F.embedding(indices, w, padding_idx, max_norm, norm_type)
            return {"out": out, "weight": w} if max_norm is not None else {"out": out}

        return run

    def p(padding_idx=None, max_norm=None, norm_type=2.0):
        return {"padding_idx": padding_idx, "max_norm": max_norm, "norm_type": norm_type}

    f.add("emb_basic", "embedding", p(), {"weight": f.randn(7, 5), "indices": np.array([1, 0, 6, 1], np.int64)}, emb(), 0, 0)
    f.add("emb_nd", "embedding", p(), {"weight": f.randn(40, 12), "indices": f.ints(40, 2, 3, 4)}, emb(), 0, 0)
    f.add("emb_i32", "embedding", p(), {"weight": f.randn(33, 8), "indices": f.ints(33, 21, dtype=np.int32)}, emb(), 0, 0)
    f.add("emb_padding_forward_keeps_row", "embedding", p(padding_idx=2), {"weight": f.randn(16, 8), "indices": np.array([2, 5, 2, 0], np.int64)}, emb(2), 0, 0)
    f.add("emb_padding_negative", "embedding", p(padding_idx=-2), {"weight": f.randn(16, 8), "indices": np.array([14, 3, 15], np.int64)}, emb(-2), 0, 0)
    f.add("emb_dim1", "embedding", p(), {"weight": f.randn(25, 1), "indices": f.ints(25, 13)}, emb(), 0, 0)
    f.add("emb_dim_odd", "embedding", p(), {"weight": f.randn(60, 777), "indices": f.ints(60, 30)}, emb(), 0, 0)
    f.add("emb_empty_indices", "embedding", p(), {"weight": f.randn(9, 4), "indices": np.zeros(0, np.int64)}, emb(), 0, 0)
    f.add("emb_empty_2d_indices", "embedding", p(), {"weight": f.randn(9, 4), "indices": np.zeros((3, 0), np.int64)}, emb(), 0, 0)
    # max_norm: rows referenced are renormalised in place (repeats included); others untouched.
    for cid, mn, nt, n in [("emb_max_norm_l2", 1.0, 2.0, 9), ("emb_max_norm_l1", 2.0, 1.0, 6), ("emb_max_norm_l3", 0.8, 3.0, 10)]:
        w = f.randn(24, 16) * 1.5
        idx = f.ints(24, n)
        idx[-1] = idx[0]
        f.add(cid, "embedding", p(max_norm=mn, norm_type=nt), {"weight": w, "indices": idx}, emb(None, mn, nt))
    f.add("emb_max_norm_no_effect", "embedding", p(max_norm=1e6), {"weight": f.randn(24, 16), "indices": f.ints(24, 10)}, emb(None, 1e6), 1e-6, 1e-6)
    f.add("emb_max_norm_padding", "embedding", p(padding_idx=0, max_norm=0.5), {"weight": f.randn(12, 8), "indices": np.array([0, 3, 0, 5], np.int64)}, emb(0, 0.5))
    f.add("emb_large", "embedding", p(), {"weight": f.randn(2900, 96), "indices": f.ints(2900, 1000)}, emb(), 0, 0)
    f.add("err_emb_index_too_large", "embedding", p(), {"weight": f.randn(10, 4), "indices": np.array([1, 10, 2], np.int64)}, emb(), error=True)
    f.add("err_emb_index_negative", "embedding", p(), {"weight": f.randn(10, 4), "indices": np.array([1, -1, 2], np.int64)}, emb(), error=True)
    f.add("err_emb_padding_out_of_range", "embedding", p(padding_idx=10), {"weight": f.randn(10, 4), "indices": np.array([1, 2], np.int64)}, emb(10), error=True)
    f.add("err_emb_padding_negative_out_of_range", "embedding", p(padding_idx=-11), {"weight": f.randn(10, 4), "indices": np.array([1], np.int64)}, emb(-11), error=True)


def padding_arg(padding_idx, num):
    return padding_idx


def bag_runner(mode, include_last_offset=False, padding_idx=None, max_norm=None, norm_type=2.0):
    def run(weight, indices, offsets=None, per_sample_weights=None):
        w = weight.clone()
        out = F.embedding_bag(
            indices,
            w,
            offsets,
            max_norm=max_norm,
            norm_type=norm_type,
            mode=mode,
            per_sample_weights=per_sample_weights,
            include_last_offset=include_last_offset,
            padding_idx=padding_idx,
        )
        return {"out": out, "weight": w} if max_norm is not None else {"out": out}

    return run


def bag_params(mode, include_last_offset=False, padding_idx=None, max_norm=None, norm_type=2.0):
    return {"mode": mode, "include_last_offset": include_last_offset, "padding_idx": padding_idx, "max_norm": max_norm, "norm_type": norm_type}


def offsets_for(f, n, bags, empty=0):
    """`bags` ascending offsets starting at 0 over `n` indices, `empty` of the bags empty."""
    cuts = np.sort(f.rng.integers(0, n + 1, size=bags - 1))
    offs = np.concatenate([[0], cuts]).astype(np.int64)
    for k in range(empty):
        j = 1 + (k * 7) % (bags - 1) if bags > 1 else 0
        offs[j] = offs[j - 1] if j > 0 else 0
        offs = np.maximum.accumulate(offs)
    return offs


def bag_cases(f):
    for mode in ["sum", "mean", "max"]:
        P = lambda **kw: bag_params(mode, **kw)  # noqa: E731
        R = lambda **kw: bag_runner(mode, **kw)  # noqa: E731
        w = f.randn(80, 24)
        idx = f.ints(80, 61)
        f.add(f"bag_{mode}_1d", "embedding_bag", P(), {"weight": w, "indices": idx, "offsets": offsets_for(f, 61, 14, empty=2)}, R())
        f.add(f"bag_{mode}_2d", "embedding_bag", P(), {"weight": f.randn(60, 20), "indices": f.ints(60, 7, 5)}, R())
        f.add(f"bag_{mode}_2d_i32", "embedding_bag", P(), {"weight": f.randn(60, 20), "indices": f.ints(60, 4, 3, dtype=np.int32)}, R())
        offs = offsets_for(f, 37, 11, empty=1)
        offs[-1] = 37
        f.add(f"bag_{mode}_last_offset", "embedding_bag", P(include_last_offset=True), {"weight": f.randn(50, 12), "indices": f.ints(50, 37), "offsets": offs}, R(include_last_offset=True))
        idx = f.ints(9, 14)
        idx[[0, 3, 4, 9]] = 3
        f.add(f"bag_{mode}_padding", "embedding_bag", P(padding_idx=3), {"weight": f.randn(9, 6), "indices": idx, "offsets": np.array([0, 3, 5, 5, 9], np.int64)}, R(padding_idx=3))
        idx = np.array([8, 8, 1, 8, 2], np.int64)
        f.add(f"bag_{mode}_padding_negative", "embedding_bag", P(padding_idx=-1), {"weight": f.randn(9, 6), "indices": idx, "offsets": np.array([0, 2, 3], np.int64)}, R(padding_idx=-1))
        f.add(f"bag_{mode}_max_norm", "embedding_bag", P(max_norm=1.25), {"weight": f.randn(30, 8) * 2, "indices": f.ints(30, 26), "offsets": np.array([0, 4, 13, 20], np.int64)}, R(max_norm=1.25))
        f.add(f"bag_{mode}_i32", "embedding_bag", P(), {"weight": f.randn(30, 8), "indices": f.ints(30, 22, dtype=np.int32), "offsets": np.array([0, 5, 5, 12], np.int32)}, R())
        f.add(f"bag_{mode}_empty_input", "embedding_bag", P(), {"weight": f.randn(30, 8), "indices": np.zeros(0, np.int64), "offsets": np.zeros(3, np.int64)}, R())
        f.add(f"bag_{mode}_one_long_bag", "embedding_bag", P(), {"weight": f.randn(500, 32), "indices": f.ints(500, 3000), "offsets": np.zeros(1, np.int64)}, R(), 1e-5, 1e-4)
    f.add("bag_sum_per_sample_weights", "embedding_bag", bag_params("sum"), {"weight": f.randn(40, 16), "indices": f.ints(40, 57), "offsets": offsets_for(f, 57, 12, empty=1), "per_sample_weights": f.randn(57)}, bag_runner("sum"))
    f.add("bag_sum_per_sample_weights_2d", "embedding_bag", bag_params("sum"), {"weight": f.randn(40, 16), "indices": f.ints(40, 5, 4), "per_sample_weights": f.randn(5, 4)}, bag_runner("sum"))
    f.add("bag_sum_per_sample_weights_padding", "embedding_bag", bag_params("sum", padding_idx=0), {"weight": f.randn(10, 4), "indices": np.array([0, 4, 0, 2, 9], np.int64), "offsets": np.array([0, 2, 4], np.int64), "per_sample_weights": f.randn(5)}, bag_runner("sum", padding_idx=0))
    w = f.randn(10, 4)
    w[3, 1] = np.nan
    for mode in ["sum", "max"]:
        f.add(f"bag_{mode}_nan_propagates", "embedding_bag", bag_params(mode), {"weight": w, "indices": np.array([3, 1, 5, 2, 7], np.int64), "offsets": np.array([0, 2, 4], np.int64)}, bag_runner(mode))
    f.add("bag_sum_large", "embedding_bag", bag_params("sum"), {"weight": f.randn(1500, 180), "indices": f.ints(1500, 3000), "offsets": offsets_for(f, 3000, 200, empty=5)}, bag_runner("sum"), 1e-4, 1e-4)
    # Refusals.
    E = lambda cid, mode, inputs, **kw: f.add(cid, "embedding_bag", bag_params(mode, **kw), inputs, bag_runner(mode, **kw), error=True)  # noqa: E731
    E("err_bag_psw_with_mean", "mean", {"weight": f.randn(10, 4), "indices": np.array([1, 2], np.int64), "offsets": np.array([0], np.int64), "per_sample_weights": f.randn(2)})
    E("err_bag_psw_with_max", "max", {"weight": f.randn(10, 4), "indices": np.array([1, 2], np.int64), "offsets": np.array([0], np.int64), "per_sample_weights": f.randn(2)})
    E("err_bag_psw_shape", "sum", {"weight": f.randn(10, 4), "indices": np.array([1, 2, 3], np.int64), "offsets": np.array([0], np.int64), "per_sample_weights": f.randn(2)})
    E("err_bag_first_offset_not_zero", "sum", {"weight": f.randn(10, 4), "indices": np.array([1, 2, 3], np.int64), "offsets": np.array([1, 2], np.int64)})
    E("err_bag_offset_past_end", "sum", {"weight": f.randn(10, 4), "indices": np.array([1, 2, 3], np.int64), "offsets": np.array([0, 4], np.int64)})
    E("err_bag_offsets_decreasing", "sum", {"weight": f.randn(10, 4), "indices": np.array([1, 2, 3, 4], np.int64), "offsets": np.array([0, 3, 1], np.int64)})
    E("err_bag_2d_with_offsets", "sum", {"weight": f.randn(10, 4), "indices": np.array([[1, 2], [3, 4]], np.int64), "offsets": np.array([0, 1], np.int64)})
    E("err_bag_1d_without_offsets", "sum", {"weight": f.randn(10, 4), "indices": np.array([1, 2], np.int64)})
    E("err_bag_index_too_large", "max", {"weight": f.randn(10, 4), "indices": np.array([1, 12, 3], np.int64), "offsets": np.array([0, 2], np.int64)})
    E("err_bag_index_negative", "sum", {"weight": f.randn(10, 4), "indices": np.array([1, -3, 3], np.int64), "offsets": np.array([0, 2], np.int64)})


def layer_norm_cases(f):
    def ln(eps):
        def run(x, gamma=None, beta=None):
            return {"out": F.layer_norm(x, (x.shape[-1],), gamma, beta, eps)}

        return run

    for d in [1, 5, 64, 384, 1000, 4096]:
        f.add(f"ln_dim{d}", "layer_norm", {"eps": 1e-5}, {"x": f.randn(9, d), "gamma": f.randn(d), "beta": f.randn(d)}, ln(1e-5), 1e-5, 1e-4)
    f.add("ln_no_affine_eps1e-12", "layer_norm", {"eps": 1e-12}, {"x": f.randn(4, 768)}, ln(1e-12), 1e-5, 1e-4)
    f.add("ln_3d_input", "layer_norm", {"eps": 1e-5}, {"x": f.randn(2, 3, 40), "gamma": f.randn(40), "beta": f.randn(40)}, ln(1e-5), 1e-5, 1e-4)
    x = np.repeat(f.randn(4, 1), 32, axis=1)
    f.add("ln_constant_rows", "layer_norm", {"eps": 1e-5}, {"x": x, "gamma": f.randn(32), "beta": f.randn(32)}, ln(1e-5), 1e-5, 1e-4)
    x = (1000 + 0.01 * f.randn(5, 256)).astype(np.float32)
    f.add("ln_large_mean_small_spread", "layer_norm", {"eps": 1e-5}, {"x": x, "gamma": f.randn(256), "beta": f.randn(256)}, ln(1e-5), 2e-3, 2e-3)
    f.add("ln_empty_rows", "layer_norm", {"eps": 1e-5}, {"x": np.zeros((0, 16), np.float32), "gamma": f.randn(16), "beta": f.randn(16)}, ln(1e-5), 1e-5, 1e-4)


def stable_module(weight, padding_idx, gamma, beta):
    v, d = weight.shape
    m = bnb.nn.StableEmbedding(v, d, padding_idx=padding_idx)
    with torch.no_grad():
        m.weight.copy_(weight)
        m.norm.weight.copy_(gamma)
        m.norm.bias.copy_(beta)
    return m


def stable_cases(f):
    def run(padding_idx):
        def go(weight, indices, gamma, beta):
            return {"out": stable_module(weight, padding_idx, gamma, beta)(indices)}

        return go

    f.add("stable_basic", "stable_embedding", {"padding_idx": None, "eps": 1e-5}, {"weight": f.randn(90, 48), "indices": f.ints(90, 3, 7), "gamma": f.randn(48), "beta": f.randn(48)}, run(None), 1e-5, 1e-4)
    f.add("stable_padding", "stable_embedding", {"padding_idx": 0, "eps": 1e-5}, {"weight": f.randn(40, 32), "indices": np.array([0, 5, 0, 9], np.int64), "gamma": f.randn(32), "beta": f.randn(32)}, run(0), 1e-5, 1e-4)
    f.add("err_stable_index_too_large", "stable_embedding", {"padding_idx": None, "eps": 1e-5}, {"weight": f.randn(10, 8), "indices": np.array([3, 10], np.int64), "gamma": f.randn(8), "beta": f.randn(8)}, run(None), error=True)


def bert_module(weights, gamma, beta, eps):
    word, pos, typ = weights
    cfg = BertConfig(vocab_size=word.shape[0], hidden_size=word.shape[1], max_position_embeddings=pos.shape[0], type_vocab_size=typ.shape[0], layer_norm_eps=eps, hidden_dropout_prob=0.0, pad_token_id=0)
    m = BertEmbeddings(cfg).eval()
    with torch.no_grad():
        m.word_embeddings.weight.copy_(word)
        m.position_embeddings.weight.copy_(pos)
        m.token_type_embeddings.weight.copy_(typ)
        m.LayerNorm.weight.copy_(gamma)
        m.LayerNorm.bias.copy_(beta)
    return m


def sum_ln(eps, k):
    """BertEmbeddings itself for three tables of one shape; Σ lookups + layer_norm otherwise."""

    def run(gamma, beta, **tables):
        ws = [tables[f"weight{i}"] for i in range(k)]
        ids = [tables[f"indices{i}"] for i in range(k)]
        if k == 3 and ids[0].shape == ids[1].shape == ids[2].shape and ids[0].dim() == 2:
            m = bert_module(ws, gamma, beta, eps)
            return {"out": m(input_ids=ids[0], position_ids=ids[1], token_type_ids=ids[2])}
        shapes = torch.broadcast_shapes(*[i.shape for i in ids])
        total = sum(F.embedding(i.expand(shapes), w) for i, w in zip(ids, ws))
        return {"out": F.layer_norm(total, (total.shape[-1],), gamma, beta, eps)}

    return run


def sum_ln_inputs(f, vocab, hidden, batch, seq, types=2, positions=None):
    positions = positions or seq
    return {
        "weight0": f.randn(vocab, hidden),
        "indices0": f.ints(vocab, batch, seq),
        "weight1": f.randn(positions, hidden),
        "indices1": np.tile(np.arange(seq, dtype=np.int64), (batch, 1)),
        "weight2": f.randn(types, hidden),
        "indices2": f.ints(types, batch, seq),
        "gamma": f.randn(hidden),
        "beta": f.randn(hidden),
    }


def bert_cases(f):
    f.add("bert_block", "embedding_sum_layer_norm", {"eps": 1e-12}, sum_ln_inputs(f, 800, 64, 2, 16, positions=64), sum_ln(1e-12, 3), 1e-5, 1e-4)
    f.add("bert_block_d384", "embedding_sum_layer_norm", {"eps": 1e-12}, sum_ln_inputs(f, 120, 384, 1, 12, positions=16), sum_ln(1e-12, 3), 1e-5, 1e-4)
    inputs = {"weight0": f.randn(200, 32), "indices0": f.ints(200, 3, 9), "weight1": f.randn(16, 32), "indices1": np.arange(9, dtype=np.int64)[None, :], "gamma": f.randn(32), "beta": f.randn(32)}
    f.add("sum_ln_broadcast_positions", "embedding_sum_layer_norm", {"eps": 1e-5}, inputs, sum_ln(1e-5, 2), 1e-5, 1e-4)
    inputs = {"weight0": f.randn(10, 8), "indices0": f.ints(10, 3), "weight1": f.randn(10, 8), "indices1": f.ints(10, 2), "gamma": f.randn(8), "beta": f.randn(8)}
    f.add("err_sum_ln_shape_mismatch", "embedding_sum_layer_norm", {"eps": 1e-5}, inputs, sum_ln(1e-5, 2), error=True)
    inputs = {"weight0": f.randn(10, 8), "indices0": f.ints(10, 3), "weight1": f.randn(10, 6), "indices1": f.ints(10, 3), "gamma": f.randn(8), "beta": f.randn(8)}
    f.add("err_sum_ln_width_mismatch", "embedding_sum_layer_norm", {"eps": 1e-5}, inputs, sum_ln(1e-5, 2), error=True)


def axial_cases(f):
    def run(shape):
        def go(weight0, weight1, position_ids):
            d1, d2 = weight0.shape[1], weight1.shape[1]
            cfg = ReformerConfig(axial_pos_shape=list(shape), axial_pos_embds_dim=[d1, d2], hidden_size=d1 + d2, attn_layers=["local"], local_attn_chunk_length=1, hidden_dropout_prob=0.0)
            m = AxialPositionEmbeddings(cfg).eval()
            with torch.no_grad():
                m.weights[0].copy_(weight0.view(shape[0], 1, d1))
                m.weights[1].copy_(weight1.view(1, shape[1], d2))
            return {"out": m(position_ids)}

        return go

    f.add("axial_arange", "axial_position_embedding", {"axial_pos_shape": [8, 16]}, {"weight0": f.randn(8, 16), "weight1": f.randn(16, 24), "position_ids": np.tile(np.arange(100, dtype=np.int64), (2, 1))}, run((8, 16)), 0, 0)
    f.add("axial_random_positions", "axial_position_embedding", {"axial_pos_shape": [4, 8]}, {"weight0": f.randn(4, 8), "weight1": f.randn(8, 8), "position_ids": f.ints(32, 3, 20)}, run((4, 8)), 0, 0)
    f.add("err_axial_position_too_large", "axial_position_embedding", {"axial_pos_shape": [4, 8]}, {"weight0": f.randn(4, 8), "weight1": f.randn(8, 8), "position_ids": np.array([[1, 32, 3]], np.int64)}, run((4, 8)), error=True)


def code_map(name):
    return bnbf.create_dynamic_map(signed=True) if name == "dynamic" else bnbf.create_linear_map(signed=True)


# The block sizes bitsandbytes' CUDA kernels take (its CPU backend does not check).
BNB_BLOCKSIZES = (4096, 2048, 1024, 512, 256, 128, 64)


def quantize_cases(f):
    def q(blocksize, code):
        def run(x):
            if blocksize not in BNB_BLOCKSIZES:
                raise ValueError(f"blocksize {blocksize} is not supported (bitsandbytes' CUDA backend takes {BNB_BLOCKSIZES})")
            codes, state = bnbf.quantize_blockwise(x.flatten(), code=code_map(code), blocksize=blocksize)
            return {"codes": codes, "absmax": state.absmax}

        return run

    def dq(blocksize, code):
        def run(codes, absmax):
            return {"out": bnbf.dequantize_blockwise(codes, absmax=absmax, code=code_map(code), blocksize=blocksize)}

        return run

    for bs in [64, 256, 4096]:
        f.add(f"qb_dynamic_bs{bs}", "quantize_blockwise", {"blocksize": bs, "code": "dynamic"}, {"x": f.randn(9000)}, q(bs, "dynamic"), 0, 0)
    f.add("qb_linear_bs256", "quantize_blockwise", {"blocksize": 256, "code": "linear"}, {"x": f.randn(3000)}, q(256, "linear"), 0, 0)
    f.add("qb_2d_input", "quantize_blockwise", {"blocksize": 128, "code": "dynamic"}, {"x": f.randn(37, 100)}, q(128, "dynamic"), 0, 0)
    x = f.randn(164)
    x[64:128] = 0
    f.add("qb_zero_block", "quantize_blockwise", {"blocksize": 64, "code": "dynamic"}, {"x": x}, q(64, "dynamic"), 0, 0)
    f.add("err_qb_blocksize", "quantize_blockwise", {"blocksize": 100, "code": "dynamic"}, {"x": f.randn(100)}, q(100, "dynamic"), error=True)
    f.add("dqb_dynamic_bs256", "dequantize_blockwise", {"blocksize": 256, "code": "dynamic"}, {"codes": f.ints(256, 5000, dtype=np.uint8), "absmax": np.abs(f.randn(20)) + 0.1}, dq(256, "dynamic"), 1e-6, 1e-6)
    f.add("dqb_linear_bs64", "dequantize_blockwise", {"blocksize": 64, "code": "linear"}, {"codes": f.ints(256, 1000, dtype=np.uint8), "absmax": np.abs(f.randn(16)) + 0.1}, dq(64, "linear"), 1e-6, 1e-6)


def quantized_table(weight, scheme, blocksize):
    """The table as bitsandbytes' own layer stores it, dequantized: [V, D] f32."""
    v, d = weight.shape
    rows = torch.arange(v)
    if scheme == "int8_blockwise":
        codes, state = bnbf.quantize_blockwise(weight.flatten(), code=code_map("dynamic"), blocksize=blocksize)
        return bnbf.dequantize_blockwise(codes, state).view(v, d)
    if scheme == "int8_rowwise":
        m = bnb.nn.Embedding8bit(v, d)
        m.weight = bnb.nn.Int8Params(weight.clone(), requires_grad=False)
        return m.to("cpu")(rows)
    if scheme in ("nf4", "fp4"):
        m = bnb.nn.Embedding4bit(v, d, quant_type=scheme)
        m.weight = bnb.nn.Params4bit(weight.clone(), requires_grad=False, quant_type=scheme, blocksize=blocksize)
        return m.to("cpu")(rows)
    if scheme == "f16":
        return weight.half().float()
    if scheme == "f32":
        return weight
    raise ValueError(scheme)


def quantized_cases(f):
    def lookup(scheme, blocksize):
        def run(weight, indices):
            return {"out": F.embedding(indices, quantized_table(weight, scheme, blocksize))}

        return run

    def bag(scheme, blocksize, mode, padding_idx=None):
        def run(weight, indices, offsets=None):
            return {"out": F.embedding_bag(indices, quantized_table(weight, scheme, blocksize), offsets, mode=mode, padding_idx=padding_idx)}

        return run

    # Outputs of 1000 values or more: FORMAT.md lets 0.1% of a quantization case's values
    # take the neighbouring code (a value on a rounding tie, which bitsandbytes' CPU and
    # CUDA paths themselves round differently), and a smaller case would allow none.
    P = lambda scheme, bs: {"scheme": scheme, "blocksize": bs}  # noqa: E731
    f.add("q8_block_bs64", "quantized_embedding", P("int8_blockwise", 64), {"weight": f.randn(150, 128), "indices": f.ints(150, 40)}, lookup("int8_blockwise", 64))
    f.add("q8_block_bs256_rows_straddle", "quantized_embedding", P("int8_blockwise", 256), {"weight": f.randn(200, 96), "indices": f.ints(200, 3, 30)}, lookup("int8_blockwise", 256))
    f.add("q8_rowwise", "quantized_embedding", P("int8_rowwise", None), {"weight": f.randn(150, 64), "indices": f.ints(150, 60)}, lookup("int8_rowwise", None))
    f.add("q4_nf4_bs64", "quantized_embedding", P("nf4", 64), {"weight": f.randn(100, 128), "indices": f.ints(100, 40)}, lookup("nf4", 64))
    f.add("q4_fp4_bs64", "quantized_embedding", P("fp4", 64), {"weight": f.randn(100, 64), "indices": f.ints(100, 40)}, lookup("fp4", 64))
    f.add("q4_nf4_bs128_2d", "quantized_embedding", P("nf4", 128), {"weight": f.randn(64, 256), "indices": f.ints(64, 4, 5)}, lookup("nf4", 128))
    f.add("err_q8_index_too_large", "quantized_embedding", P("int8_rowwise", None), {"weight": f.randn(10, 8), "indices": np.array([2, 11], np.int64)}, lookup("int8_rowwise", None), error=True)

    def BP(scheme, bs, mode, padding_idx=None):
        return {"scheme": scheme, "blocksize": bs, "mode": mode, "padding_idx": padding_idx, "include_last_offset": False}

    f.add("q8_block_bag_sum", "quantized_embedding_bag", BP("int8_blockwise", 64, "sum"), {"weight": f.randn(120, 64), "indices": f.ints(120, 160), "offsets": offsets_for(f, 160, 32, empty=1)}, bag("int8_blockwise", 64, "sum"))
    f.add("q8_rowwise_bag_mean", "quantized_embedding_bag", BP("int8_rowwise", None, "mean"), {"weight": f.randn(120, 64), "indices": f.ints(120, 160), "offsets": offsets_for(f, 160, 32)}, bag("int8_rowwise", None, "mean"))
    f.add("q4_nf4_bag_max", "quantized_embedding_bag", BP("nf4", 64, "max"), {"weight": f.randn(120, 64), "indices": f.ints(120, 160), "offsets": offsets_for(f, 160, 32)}, bag("nf4", 64, "max"))
    f.add("q4_fp4_bag_sum_2d", "quantized_embedding_bag", BP("fp4", 64, "sum"), {"weight": f.randn(120, 64), "indices": f.ints(120, 32, 4)}, bag("fp4", 64, "sum"))


# ---------------------------------------------------------------- training ops


def sparse_parts(grad):
    g = grad.coalesce()
    return g.indices()[0].to(torch.int64), g.values()


def emb_backward_cases(f):
    def run(num_weights, padding_idx=None, scale=False, sparse=False):
        def go(indices, grad_out):
            d = grad_out.shape[-1]
            w = torch.zeros(num_weights, d, requires_grad=True)
            out = F.embedding(indices, w, padding_idx=padding_idx, scale_grad_by_freq=scale, sparse=sparse)
            out.backward(grad_out)
            if sparse:
                i, v = sparse_parts(w.grad)
                return {"grad_indices": i, "grad_values": v}
            return {"grad_weight": w.grad}

        return go

    def P(v, padding_idx=None, scale=False, sparse=False):
        return {"num_weights": v, "padding_idx": padding_idx, "scale_grad_by_freq": scale, "sparse": sparse}

    def idx_grad(v, shape, d, dtype=np.int64):
        return {"indices": f.ints(v, *shape, dtype=dtype), "grad_out": f.randn(*shape, d)}

    f.add("emb_bw_dense", "embedding_backward", P(60), idx_grad(60, (45,), 16), run(60))
    f.add("emb_bw_nd", "embedding_backward", P(30), idx_grad(30, (2, 3, 5), 8), run(30))
    f.add("emb_bw_i32", "embedding_backward", P(30), idx_grad(30, (20,), 8, np.int32), run(30))
    inputs = idx_grad(20, (12,), 8)
    inputs["indices"][[1, 4, 7]] = 0
    f.add("emb_bw_padding", "embedding_backward", P(20, 0), inputs, run(20, 0))
    inputs = idx_grad(20, (12,), 8)
    inputs["indices"][[2, 5]] = 19
    f.add("emb_bw_padding_negative", "embedding_backward", P(20, -1), inputs, run(20, -1))
    f.add("emb_bw_scale_grad_by_freq", "embedding_backward", P(15, None, True), idx_grad(15, (40,), 8), run(15, None, True))
    inputs = idx_grad(15, (40,), 8)
    inputs["indices"][::5] = 2
    f.add("emb_bw_scale_padding", "embedding_backward", P(15, 2, True), inputs, run(15, 2, True))
    f.add("emb_bw_sparse", "embedding_backward", P(80, None, False, True), idx_grad(80, (50,), 16), run(80, None, False, True))
    inputs = {"indices": np.array([0, 4, 0, 7, 4], np.int64), "grad_out": f.randn(5, 8)}
    f.add("emb_bw_sparse_padding", "embedding_backward", P(30, 0, False, True), inputs, run(30, 0, False, True))
    f.add("emb_bw_dim_odd", "embedding_backward", P(30, None), idx_grad(30, (40,), 777), run(30))
    f.add("emb_bw_empty", "embedding_backward", P(10), {"indices": np.zeros(0, np.int64), "grad_out": np.zeros((0, 4), np.float32)}, run(10))
    inputs = idx_grad(600, (3000,), 16)
    inputs["indices"][::3] = 17  # one hot row
    f.add("emb_bw_hot_row", "embedding_backward", P(600), inputs, run(600), 1e-4, 1e-4)
    f.add("err_emb_bw_sparse_scale", "embedding_backward", P(30, None, True, True), idx_grad(30, (20,), 8), run(30, None, True, True), error=True)
    f.add("err_emb_bw_index_too_large", "embedding_backward", P(10), {"indices": np.array([3, 10], np.int64), "grad_out": f.randn(2, 4)}, run(10), error=True)
    f.add("err_emb_bw_index_negative", "embedding_backward", P(10), {"indices": np.array([3, -1], np.int64), "grad_out": f.randn(2, 4)}, run(10), error=True)
    f.add("err_emb_bw_padding_out_of_range", "embedding_backward", P(10, 10), {"indices": np.array([3, 1], np.int64), "grad_out": f.randn(2, 4)}, run(10, 10), error=True)


def bag_backward_cases(f):
    def run(mode, include_last_offset=False, padding_idx=None, scale=False, sparse=False):
        def go(weight, indices, grad_out, offsets=None, per_sample_weights=None):
            w = weight.clone().requires_grad_(True)
            psw = per_sample_weights.clone().requires_grad_(True) if per_sample_weights is not None else None
            out = F.embedding_bag(indices, w, offsets, mode=mode, per_sample_weights=psw, include_last_offset=include_last_offset, padding_idx=padding_idx, scale_grad_by_freq=scale, sparse=sparse)
            out.backward(grad_out)
            res = {}
            if sparse:
                res["grad_indices"], res["grad_values"] = sparse_parts(w.grad)
            else:
                res["grad_weight"] = w.grad
            if psw is not None:
                res["grad_per_sample_weights"] = psw.grad
            return res

        return go

    def P(mode, include_last_offset=False, padding_idx=None, scale=False, sparse=False):
        return {"mode": mode, "include_last_offset": include_last_offset, "padding_idx": padding_idx, "scale_grad_by_freq": scale, "sparse": sparse}

    for mode in ["sum", "mean", "max"]:
        offs = np.array([0, 3, 8], np.int64)
        f.add(f"bag_bw_{mode}_small", "embedding_bag_backward", P(mode), {"weight": f.randn(10, 3), "indices": f.ints(10, 8), "grad_out": f.randn(3, 3), "offsets": offs}, run(mode))
        offs = np.array([0, 2, 2, 6, 9], np.int64)
        f.add(f"bag_bw_{mode}_empty_bags", "embedding_bag_backward", P(mode), {"weight": f.randn(20, 8), "indices": f.ints(20, 9), "grad_out": f.randn(5, 8), "offsets": offs}, run(mode))
        idx = f.ints(20, 7)
        idx[[0, 4]] = 0
        f.add(f"bag_bw_{mode}_padding", "embedding_bag_backward", P(mode, padding_idx=0), {"weight": f.randn(20, 8), "indices": idx, "grad_out": f.randn(3, 8), "offsets": np.array([0, 1, 4], np.int64)}, run(mode, padding_idx=0))
        f.add(f"bag_bw_{mode}_2d", "embedding_bag_backward", P(mode), {"weight": f.randn(30, 16), "indices": f.ints(30, 6, 5), "grad_out": f.randn(6, 16)}, run(mode))
        offs = np.array([0, 4, 9, 12], np.int64)
        f.add(f"bag_bw_{mode}_include_last", "embedding_bag_backward", P(mode, include_last_offset=True), {"weight": f.randn(20, 8), "indices": f.ints(20, 12), "grad_out": f.randn(3, 8), "offsets": offs}, run(mode, include_last_offset=True))
        sparse_inputs = {"weight": f.randn(50, 16), "indices": f.ints(50, 36), "grad_out": f.randn(4, 16), "offsets": np.array([0, 10, 22, 22], np.int64)}
        scale_inputs = {"weight": f.randn(30, 8), "indices": f.ints(12, 30), "grad_out": f.randn(3, 8), "offsets": np.array([0, 9, 20], np.int64)}
        ok = mode != "max"  # max with sparse or with scale_grad_by_freq: refused by PyTorch
        f.add(f"bag_bw_{mode}_sparse", "embedding_bag_backward", P(mode, sparse=True), sparse_inputs, run(mode, sparse=True), error=not ok)
        f.add(f"bag_bw_{mode}_scale_grad_by_freq", "embedding_bag_backward", P(mode, scale=True), scale_inputs, run(mode, scale=True), error=not ok)
        f.add(f"bag_bw_{mode}_i32", "embedding_bag_backward", P(mode), {"weight": f.randn(20, 8), "indices": f.ints(20, 12, dtype=np.int32), "grad_out": f.randn(3, 8), "offsets": np.array([0, 3, 7], np.int32)}, run(mode))
        f.add(f"bag_bw_{mode}_one_long_bag", "embedding_bag_backward", P(mode), {"weight": f.randn(300, 16), "indices": f.ints(300, 4000), "grad_out": f.randn(1, 16), "offsets": np.zeros(1, np.int64)}, run(mode), 1e-4, 1e-4)
    f.add("bag_bw_sum_psw", "embedding_bag_backward", P("sum"), {"weight": f.randn(50, 16), "indices": f.ints(50, 30), "grad_out": f.randn(4, 16), "offsets": np.array([0, 7, 7, 19], np.int64), "per_sample_weights": f.randn(30)}, run("sum"))
    f.add("bag_bw_sum_psw_2d_padding", "embedding_bag_backward", P("sum", padding_idx=0), {"weight": f.randn(20, 8), "indices": np.array([[0, 3, 5], [7, 0, 0]], np.int64), "grad_out": f.randn(2, 8), "per_sample_weights": f.randn(2, 3)}, run("sum", padding_idx=0))
    f.add("bag_bw_sum_psw_sparse", "embedding_bag_backward", P("sum", sparse=True), {"weight": f.randn(40, 8), "indices": f.ints(40, 24), "grad_out": f.randn(3, 8), "offsets": np.array([0, 8, 15], np.int64), "per_sample_weights": f.randn(24)}, run("sum", sparse=True))
    f.add("err_bag_bw_index_too_large", "embedding_bag_backward", P("sum"), {"weight": f.randn(10, 4), "indices": np.array([2, 10], np.int64), "grad_out": f.randn(2, 4), "offsets": np.array([0, 1], np.int64)}, run("sum"), error=True)
    f.add("err_bag_bw_psw_with_mean", "embedding_bag_backward", P("mean"), {"weight": f.randn(10, 4), "indices": np.array([2, 3], np.int64), "grad_out": f.randn(1, 4), "offsets": np.array([0], np.int64), "per_sample_weights": f.randn(2)}, run("mean"), error=True)
    f.add("err_bag_bw_offsets_decreasing", "embedding_bag_backward", P("sum"), {"weight": f.randn(10, 4), "indices": np.array([2, 3, 4], np.int64), "grad_out": f.randn(3, 4), "offsets": np.array([0, 2, 1], np.int64)}, run("sum"), error=True)


def norm_backward_cases(f):
    def ln(eps):
        def go(x, grad_out, gamma=None, beta=None):
            x = x.clone().requires_grad_(True)
            g = gamma.clone().requires_grad_(True) if gamma is not None else None
            b = beta.clone().requires_grad_(True) if beta is not None else None
            F.layer_norm(x, (x.shape[-1],), g, b, eps).backward(grad_out)
            res = {"grad_x": x.grad}
            if g is not None:
                res.update(grad_gamma=g.grad, grad_beta=b.grad)
            return res

        return go

    for d in [1, 7, 64, 384, 1000]:
        f.add(f"ln_bw_dim{d}", "layer_norm_backward", {"eps": 1e-5}, {"x": f.randn(10, d), "grad_out": f.randn(10, d), "gamma": f.randn(d), "beta": f.randn(d)}, ln(1e-5), 1e-4, 1e-4)
    f.add("ln_bw_no_affine", "layer_norm_backward", {"eps": 1e-12}, {"x": f.randn(4, 768), "grad_out": f.randn(4, 768)}, ln(1e-12), 1e-4, 1e-4)
    f.add("ln_bw_3d", "layer_norm_backward", {"eps": 1e-5}, {"x": f.randn(2, 3, 40), "grad_out": f.randn(2, 3, 40), "gamma": f.randn(40), "beta": f.randn(40)}, ln(1e-5), 1e-4, 1e-4)
    f.add("ln_bw_many_rows", "layer_norm_backward", {"eps": 1e-5}, {"x": f.randn(1200, 32), "grad_out": f.randn(1200, 32), "gamma": f.randn(32), "beta": f.randn(32)}, ln(1e-5), 1e-3, 1e-3)

    def stable(padding_idx):
        def go(weight, indices, gamma, beta, grad_out):
            m = stable_module(weight, padding_idx, gamma, beta)
            m(indices).backward(grad_out)
            return {"grad_weight": m.weight.grad, "grad_gamma": m.norm.weight.grad, "grad_beta": m.norm.bias.grad}

        return go

    f.add("stable_bw_basic", "stable_embedding_backward", {"padding_idx": None, "eps": 1e-5}, {"weight": f.randn(80, 48), "indices": f.ints(80, 4, 6), "gamma": f.randn(48), "beta": f.randn(48), "grad_out": f.randn(4, 6, 48)}, stable(None), 1e-4, 1e-4)
    f.add("stable_bw_padding_repeats", "stable_embedding_backward", {"padding_idx": 0, "eps": 1e-5}, {"weight": f.randn(40, 32), "indices": np.array([0, 3, 3, 0, 9, 3], np.int64), "gamma": f.randn(32), "beta": f.randn(32), "grad_out": f.randn(6, 32)}, stable(0), 1e-4, 1e-4)

    def sum_ln_bw(eps, k):
        def go(gamma, beta, grad_out, **tables):
            ws = [tables[f"weight{i}"].clone().requires_grad_(True) for i in range(k)]
            ids = [tables[f"indices{i}"] for i in range(k)]
            g, b = gamma.clone().requires_grad_(True), beta.clone().requires_grad_(True)
            if k == 3:
                m = bert_module([w.detach() for w in ws], g.detach(), b.detach(), eps)
                m(input_ids=ids[0], position_ids=ids[1], token_type_ids=ids[2]).backward(grad_out)
                res = {"grad_weight0": m.word_embeddings.weight.grad, "grad_weight1": m.position_embeddings.weight.grad, "grad_weight2": m.token_type_embeddings.weight.grad}
                return {**res, "grad_gamma": m.LayerNorm.weight.grad, "grad_beta": m.LayerNorm.bias.grad}
            shapes = torch.broadcast_shapes(*[i.shape for i in ids])
            total = sum(F.embedding(i.expand(shapes), w) for i, w in zip(ids, ws))
            F.layer_norm(total, (total.shape[-1],), g, b, eps).backward(grad_out)
            return {**{f"grad_weight{i}": w.grad for i, w in enumerate(ws)}, "grad_gamma": g.grad, "grad_beta": b.grad}

        return go

    inputs = sum_ln_inputs(f, 300, 64, 3, 17, positions=32)
    inputs["grad_out"] = f.randn(3, 17, 64)
    f.add("bert_bw_block", "embedding_sum_layer_norm_backward", {"eps": 1e-12}, inputs, sum_ln_bw(1e-12, 3), 1e-4, 1e-4)
    inputs = {"weight0": f.randn(300, 48), "indices0": f.ints(300, 4, 9), "weight1": f.randn(64, 48), "indices1": np.arange(9, dtype=np.int64)[None, :], "gamma": f.randn(48), "beta": f.randn(48), "grad_out": f.randn(4, 9, 48)}
    f.add("bert_bw_broadcast_positions", "embedding_sum_layer_norm_backward", {"eps": 1e-5}, inputs, sum_ln_bw(1e-5, 2), 1e-4, 1e-4)


STATE_NAMES = {"sgd": ["momentum_buffer"], "adam": ["exp_avg", "exp_avg_sq"], "adamw": ["exp_avg", "exp_avg_sq"], "adagrad": ["sum"]}


def dense_optimizer(params, w):
    p = {k: v for k, v in params.items() if k != "optimizer"}
    kind = params["optimizer"]
    if "betas" in p:
        p["betas"] = tuple(p["betas"])
    if kind == "sgd":
        return torch.optim.SGD([w], **p)
    if kind == "adam":
        return torch.optim.Adam([w], **p)
    if kind == "adamw":
        return torch.optim.AdamW([w], **p)
    if kind == "adagrad":
        return torch.optim.Adagrad([w], **p)
    if kind == "adam8bit_blockwise":
        bs = p.pop("blocksize")
        assert bs == 256, "bitsandbytes' block-wise 8-bit states use blocks of 256"
        return bnb.optim.Adam8bit([w], min_8bit_size=0, **p)
    raise ValueError(kind)


def optimizer_cases(f):
    def dense(params):
        def go(weight, grads):
            w = torch.nn.Parameter(weight.clone())
            opt = dense_optimizer(params, w)
            for g in grads:
                w.grad = g.clone()
                opt.step()
            st = opt.state[w]
            res = {"weight": w.detach()}
            if params["optimizer"] == "adam8bit_blockwise":
                res.update({k: st[k] for k in ["state1", "state2", "absmax1", "absmax2"]})
            else:
                for name in STATE_NAMES[params["optimizer"]]:
                    if st.get(name) is not None:
                        res[name] = st[name]
            return res

        return go

    def add(cid, params, v, d, steps, atol=1e-5):
        f.add(cid, "optimizer_step", params, {"weight": f.randn(v, d), "grads": f.randn(steps, v, d)}, dense(params), atol, atol)

    add("opt_sgd", {"optimizer": "sgd", "lr": 0.1}, 40, 16, 3)
    add("opt_sgd_momentum", {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "dampening": 0.1}, 40, 16, 4)
    add("opt_sgd_momentum_wd_nesterov", {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.01, "nesterov": True}, 40, 16, 4)
    add("opt_adam", {"optimizer": "adam", "lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}, 40, 16, 5)
    add("opt_adam_wd", {"optimizer": "adam", "lr": 0.01, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.1}, 30, 24, 3)
    add("opt_adamw", {"optimizer": "adamw", "lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}, 30, 24, 4)
    add("opt_adagrad", {"optimizer": "adagrad", "lr": 0.1, "eps": 1e-10, "initial_accumulator_value": 0.1}, 30, 8, 4)
    add("opt_adagrad_lr_decay_wd", {"optimizer": "adagrad", "lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.05, "eps": 1e-10, "initial_accumulator_value": 0.0}, 30, 8, 3)
    add("opt_adam8bit", {"optimizer": "adam8bit_blockwise", "lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "blocksize": 256}, 64, 64, 3, 1e-4)
    add("opt_adam8bit_wd", {"optimizer": "adam8bit_blockwise", "lr": 0.01, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01, "blocksize": 256}, 100, 40, 2, 1e-4)

    def sparse(params):
        def go(weight, grad_indices, grad_values):
            kind = params["optimizer"]
            v, d = weight.shape
            if kind == "rowwise_adagrad":
                # FBGEMM EXACT_ROWWISE_ADAGRAD, as FORMAT.md states it (float32 throughout).
                w, mom = weight.clone(), torch.zeros(v)
                lr, eps, wd = params["lr"], params["eps"], params.get("weight_decay", 0.0)
                for rows, vals in zip(grad_indices, grad_values):
                    g = vals + wd * w[rows]
                    mom[rows] += (g * g).mean(dim=1)
                    w[rows] -= lr * g / (mom[rows].sqrt() + eps)[:, None]
                return {"weight": w, "momentum": mom}
            w = torch.nn.Parameter(weight.clone())
            p = {k: val for k, val in params.items() if k != "optimizer"}
            if "betas" in p:
                p["betas"] = tuple(p["betas"])
            opt = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "sparse_adam": torch.optim.SparseAdam}[kind]([w], **p)
            for rows, vals in zip(grad_indices, grad_values):
                w.grad = torch.sparse_coo_tensor(rows[None, :].to(torch.int64), vals, (v, d))
                opt.step()
            st = opt.state[w]
            names = {"sgd": [], "adagrad": ["sum"], "sparse_adam": ["exp_avg", "exp_avg_sq"]}[kind]
            return {"weight": w.detach(), **{n: st[n] for n in names}}

        return go

    def add_sparse(cid, params, v, d, steps, n):
        rows = np.stack([np.sort(f.rng.choice(v, size=n, replace=False)) for _ in range(steps)]).astype(np.int64)
        f.add(cid, "sparse_optimizer_step", params, {"weight": f.randn(v, d), "grad_indices": rows, "grad_values": f.randn(steps, n, d)}, sparse(params))

    add_sparse("opt_sparse_adam", {"optimizer": "sparse_adam", "lr": 0.01, "betas": [0.9, 0.999], "eps": 1e-8}, 90, 16, 4, 20)
    add_sparse("opt_sparse_adagrad", {"optimizer": "adagrad", "lr": 0.1, "eps": 1e-10, "initial_accumulator_value": 0.0}, 90, 16, 4, 20)
    add_sparse("opt_sparse_sgd", {"optimizer": "sgd", "lr": 0.5}, 90, 16, 3, 30)
    add_sparse("opt_rowwise_adagrad", {"optimizer": "rowwise_adagrad", "lr": 0.05, "eps": 1e-8, "weight_decay": 0.0}, 90, 16, 4, 20)
    add_sparse("opt_rowwise_adagrad_wd", {"optimizer": "rowwise_adagrad", "lr": 0.1, "eps": 1e-6, "weight_decay": 0.01}, 60, 32, 3, 25)


def axial_module(shape, d1, d2, weight0, weight1, training):
    cfg = ReformerConfig(axial_pos_shape=list(shape), axial_pos_embds_dim=[d1, d2], hidden_size=d1 + d2, attn_layers=["local"], local_attn_chunk_length=1, hidden_dropout_prob=0.0)
    m = AxialPositionEmbeddings(cfg).train(training)
    with torch.no_grad():
        m.weights[0].copy_(weight0.view(shape[0], 1, d1))
        m.weights[1].copy_(weight1.view(1, shape[1], d2))
    return m


def axial_backward_cases(f):
    """transformers' AxialPositionEmbeddings under autograd: the gradients of its two
    axial weights from an output gradient (eval mode gathers position_ids; training mode,
    dropout 0, takes the whole grid, as position_ids = arange)."""

    def run(shape, training=False):
        def go(weight0, weight1, position_ids, grad_out):
            m = axial_module(shape, weight0.shape[1], weight1.shape[1], weight0, weight1, training)
            m(position_ids).backward(grad_out)
            return {"grad_weight0": m.weights[0].grad.view(shape[0], -1), "grad_weight1": m.weights[1].grad.view(shape[1], -1)}

        return go

    def add(cid, shape, dims, position_ids, training=False, atol=1e-4, error=False, grad_shape=None):
        b, sq = position_ids.shape
        inputs = {"weight0": f.randn(shape[0], dims[0]), "weight1": f.randn(shape[1], dims[1]), "position_ids": position_ids,
                  "grad_out": f.randn(*(grad_shape or (b, sq, dims[0] + dims[1])))}
        f.add(cid, "axial_position_embedding_backward", {"axial_pos_shape": list(shape)}, inputs, run(shape, training), atol, atol, error=error)

    grid = lambda b, n: np.tile(np.arange(n, dtype=np.int64), (b, 1))  # noqa: E731
    add("axial_bw_arange", (8, 16), (16, 24), grid(2, 100))
    add("axial_bw_random_positions", (4, 8), (8, 8), f.ints(32, 3, 20))
    add("axial_bw_repeated_positions", (3, 5), (5, 3), f.ints(15, 4, 12))
    add("axial_bw_training_grid", (16, 32), (16, 24), grid(1, 512), training=True)
    add("axial_bw_training_batch", (4, 16), (12, 20), grid(3, 64), training=True)
    add("err_axial_bw_grad_shape", (4, 8), (8, 8), f.ints(32, 2, 5), error=True, grad_shape=(2, 5, 15))


def bnb_module(module, v, d):
    if module == "stable_embedding":
        return bnb.nn.StableEmbedding(v, d)
    if module == "bnb_embedding":
        return bnb.nn.Embedding(v, d)
    return torch.nn.Embedding(v, d)


def bnb_training_cases(f):
    """Layers trained by bitsandbytes' 8-bit optimizers, with the rules its
    GlobalOptimManager applies: bnb.nn.StableEmbedding and bnb.nn.Embedding register
    optim_bits = 32 for their weight, tensors under min_8bit_size keep 32-bit states,
    override_config changes one parameter's. The gradients are autograd's of
    sum(module(ids[t]) * grad_out[t]) at each step (the inputs); the outputs are every
    parameter and its states after each step."""

    def layer_steps(params):
        def go(weight, ids, grad_out, gamma=None, beta=None):
            mng = bnb.optim.GlobalOptimManager.get_instance()
            mng.initialize()  # no config left over from another case
            v, d = weight.shape
            m = bnb_module(params["module"], v, d)
            with torch.no_grad():
                m.weight.copy_(weight)
                if gamma is not None:
                    m.norm.weight.copy_(gamma)
                    m.norm.bias.copy_(beta)
            if params.get("overrides"):
                mng.register_parameters(m.parameters())
            hyper = {k: (tuple(x) if k == "betas" else x) for k, x in params.items() if k in ("lr", "betas", "eps", "weight_decay", "min_8bit_size")}
            opt = {"adam8bit": bnb.optim.Adam8bit, "adamw8bit": bnb.optim.AdamW8bit}[params["optimizer"]](m.parameters(), **hyper)
            if params.get("overrides"):
                over = {k: (tuple(x) if k == "betas" else x) for k, x in params["overrides"].items()}
                mng.override_config(m.weight, key_value_dict=over)
            named = {"weight": m.weight} if gamma is None else {"weight": m.weight, "gamma": m.norm.weight, "beta": m.norm.bias}
            grads = {n: [] for n in named}
            after = {}
            for t in range(ids.shape[0]):
                opt.zero_grad()
                (m(ids[t]) * grad_out[t]).sum().backward()
                for n, p in named.items():
                    grads[n].append(p.grad.clone())
                opt.step()
                for n, p in named.items():
                    st = opt.state[p]
                    assert st["state1"].dtype == torch.float32, f"{n}: bitsandbytes kept {st['state1'].dtype} states"
                    for key, value in [(n, p.detach()), (f"{n}_state1", st["state1"]), (f"{n}_state2", st["state2"])]:
                        after.setdefault(key, []).append(value.clone())
            out = {k: torch.stack(vals) for k, vals in after.items()}
            # The gradients the runner steps with, as the case's inputs (judge-only here).
            out.update({f"_grads_{n}": torch.stack(g) for n, g in grads.items()})
            return out

        return go

    def add_layer(cid, params, v, d, steps, n):
        inputs = {"weight": f.randn(v, d), "ids": f.ints(v, steps, n), "grad_out": f.randn(steps, n, d)}
        if params["module"] == "stable_embedding":
            inputs["gamma"], inputs["beta"] = 1 + 0.1 * f.randn(d), 0.1 * f.randn(d)
        # Run once for the gradients, then store them as inputs beside ids / grad_out.
        probe = layer_steps(params)(**{k: torch.from_numpy(np.array(x)) for k, x in inputs.items()})
        for name in ["weight", "gamma", "beta"]:
            if f"_grads_{name}" in probe:
                inputs[f"{name}_grads"] = probe[f"_grads_{name}"].numpy()

        def compute(weight, ids, grad_out, weight_grads, gamma=None, beta=None, gamma_grads=None, beta_grads=None):
            res = layer_steps(params)(weight, ids, grad_out, gamma, beta)
            for name, given in [("weight", weight_grads), ("gamma", gamma_grads), ("beta", beta_grads)]:
                if given is not None:
                    assert torch.equal(res.pop(f"_grads_{name}"), given), f"{cid}: {name} gradients not reproduced"
            return res

        f.add(cid, "layer_optimizer_steps", params, inputs, compute, 1e-5, 1e-5)

    adam = {"optimizer": "adam8bit", "lr": 0.01, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}
    add_layer("bnb_stable_embedding_adam8bit", {**adam, "module": "stable_embedding"}, 96, 44, 3, 30)
    add_layer("bnb_stable_embedding_adamw8bit", {**adam, "optimizer": "adamw8bit", "weight_decay": 0.05, "module": "stable_embedding"}, 70, 60, 3, 20)
    add_layer("bnb_embedding_adam8bit", {**adam, "module": "bnb_embedding"}, 130, 32, 3, 30)
    add_layer("bnb_override_optim_bits_lr", {**adam, "module": "embedding", "overrides": {"optim_bits": 32, "lr": 0.003, "betas": [0.8, 0.95]}}, 65, 64, 3, 20)

    def dense(params):
        def go(weight, grads):
            w = torch.nn.Parameter(weight.clone())
            p = {k: (tuple(x) if k == "betas" else x) for k, x in params.items() if k != "optimizer"}
            opt = {"adam8bit": bnb.optim.Adam8bit, "adamw8bit": bnb.optim.AdamW8bit, "adam32bit": bnb.optim.Adam32bit}[params["optimizer"]]([w], **p)
            for g in grads:
                w.grad = g.clone()
                opt.step()
            st = opt.state[w]
            names = ["state1", "state2"] + (["absmax1", "absmax2"] if st["state1"].dtype == torch.uint8 else [])
            return {"weight": w.detach(), **{n: st[n] for n in names}}

        return go

    def add_dense(cid, params, v, d, steps, error=False):
        f.add(cid, "optimizer_step", params, {"weight": f.randn(v, d), "grads": f.randn(steps, v, d)}, dense(params), 1e-4, 1e-4, error=error)

    # A plain table (4 608 elements): 8-bit states; under min_8bit_size: 32-bit ones.
    add_dense("bnb_plain_table_adam8bit", adam, 72, 64, 3)
    add_dense("bnb_small_tensor_adam8bit", adam, 40, 50, 3)
    add_dense("bnb_min_8bit_size_lowered", {**adam, "min_8bit_size": 1024}, 40, 50, 2)
    add_dense("bnb_adamw8bit_default_decay", {"optimizer": "adamw8bit", "lr": 0.02}, 64, 32, 3)
    add_dense("bnb_adam32bit", {"optimizer": "adam32bit", "lr": 0.01, "betas": [0.85, 0.99], "eps": 1e-6, "weight_decay": 0.02}, 32, 64, 3)
    # Arguments bitsandbytes 0.50 refuses: percentile_clipping (removed), optim_bits != 32.
    add_dense("err_bnb_percentile_clipping", {**adam, "percentile_clipping": 5}, 8, 8, 1, error=True)
    add_dense("err_bnb_adam8bit_optim_bits_8", {**adam, "optim_bits": 8}, 8, 8, 1, error=True)


def topk_cases(f):
    def run(k, metric, scheme, blocksize):
        def go(table, queries):
            if table.shape[1] != queries.shape[1]:
                raise ValueError(f"feature sizes differ: table {table.shape[1]}, queries {queries.shape[1]}")
            t, q = table, queries
            if metric == "cosine":
                t, q = F.normalize(t, dim=1), F.normalize(q, dim=1)
            stored = quantized_table(t, scheme, blocksize)
            scores, indices = torch.topk(q @ stored.T, k, dim=1)
            res = {"scores": scores, "indices": indices}
            if scheme not in ("f32", "f16"):
                res["_table"] = stored  # what the judge recomputes each returned score from
            return res

        return go

    def add(cid, k, metric, scheme, blocksize, n, d, q, atol=1e-4, error=False):
        params = {"k": k, "metric": metric, "scheme": scheme, "blocksize": blocksize}
        f.add(cid, "inner_product_topk", params, {"table": f.randn(n, d), "queries": f.randn(q, d if not error else d + 1)}, run(k, metric, scheme, blocksize), atol, atol, error=error and cid.endswith("mismatch"))

    add("topk_dot_small", 5, "dot", "f32", None, 100, 16, 3)
    add("topk_cosine", 10, "cosine", "f32", None, 400, 32, 4)
    add("topk_k_equals_n", 40, "dot", "f32", None, 40, 8, 2)
    add("topk_k1_many_queries", 1, "dot", "f32", None, 800, 64, 100)
    add("topk_dim_odd", 17, "dot", "f32", None, 2700, 100, 5)
    add("topk_f16", 20, "dot", "f16", None, 1000, 64, 6)
    add("topk_int8_rowwise", 20, "dot", "int8_rowwise", None, 1000, 64, 6, 1e-3)
    add("topk_int8_blockwise", 25, "dot", "int8_blockwise", 256, 800, 64, 6, 1e-3)
    add("topk_nf4", 25, "dot", "nf4", 64, 800, 64, 6, 1e-3)
    add("topk_large_k", 400, "dot", "f32", None, 4000, 16, 2)
    add("topk_empty_queries", 5, "dot", "f32", None, 100, 16, 0)
    f.add("err_topk_k_too_large", "inner_product_topk", {"k": 11, "metric": "dot", "scheme": "f32", "blocksize": None}, {"table": f.randn(10, 4), "queries": f.randn(2, 4)}, run(11, "dot", "f32", None), error=True)
    add("err_topk_dim_mismatch", 3, "dot", "f32", None, 10, 4, 2, error=True)


def interop_checks():
    """What PyTorch makes of a file this library saved (tests/save.rs writes
    `saved_sparse_adam.safetensors`): the table goes into `torch.nn.Embedding` by
    `load_state_dict(strict=True)`, the optimizer state into `torch.optim.SparseAdam` by
    its `load_state_dict`, and one more step is taken there. The gradient and PyTorch's
    table after the step go into `interop.safetensors`, which tests/save.rs resumes and
    compares against, so CI checks this without torch."""
    from safetensors import safe_open

    saved_path = os.path.join(HERE, "saved_sparse_adam.safetensors")
    if not os.path.exists(saved_path):
        print(f"{os.path.relpath(saved_path)} is missing: run `WGPU_EMBED_WRITE_REFERENCE=1 cargo test --release --test save` first")
        return
    with safe_open(saved_path, "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    v, d = saved["weight"].shape
    emb = torch.nn.Embedding(v, d, sparse=True)
    emb.load_state_dict({"weight": saved["weight"]}, strict=True)
    group = json.loads(meta["optimizer.param_groups"])[0]
    assert group.pop("optimizer") == "sparse_adam", group
    opt = torch.optim.SparseAdam(emb.parameters(), lr=group["lr"], betas=tuple(group["betas"]), eps=group["eps"])
    state = {k.split(".")[-1]: t.clone() for k, t in saved.items() if k.startswith("optimizer.state.0.")}
    saved_step = int(state["step"])
    full = opt.state_dict()
    full["state"] = {0: state}
    opt.load_state_dict(full)
    assert int(opt.state[emb.weight]["step"]) == saved_step, "the step count"
    rng = np.random.default_rng(7)
    rows = np.sort(rng.choice(v, size=25, replace=False)).astype(np.int32)
    values = rng.standard_normal((len(rows), d)).astype(np.float32)
    emb.weight.grad = torch.sparse_coo_tensor(torch.from_numpy(rows.astype(np.int64))[None, :], torch.from_numpy(values), (v, d))
    opt.step()
    checked = (
        f"torch {torch.__version__}: torch.nn.Embedding.load_state_dict(strict=True) took `weight` [{v}, {d}]; "
        f"torch.optim.SparseAdam.load_state_dict took state.0.step={saved_step}, exp_avg, exp_avg_sq; "
        "one step on step/grad_rows, step/grad_values gave step/weight"
    )
    quantized, quantized_checked = quantized_interop()
    checked = f"{checked}. {quantized_checked}" if quantized_checked else checked
    out = os.path.join(HERE, "interop.safetensors")
    save_file(
        {"step/grad_rows": rows, "step/grad_values": values, "step/weight": emb.weight.detach().numpy(), **quantized},
        out,
        metadata={"checked": checked, "generator": "tests/reference/make_cases.py", "versions": json.dumps(VERSIONS)},
    )
    print(f"{os.path.relpath(out)}: {checked}")


def bnb_layer(scheme, weight, blocksize=64):
    """bitsandbytes' own quantized embedding layer holding `weight`."""
    v, d = weight.shape
    if scheme == "int8_rowwise":
        m = bnb.nn.Embedding8bit(v, d)
        m.weight = bnb.nn.Int8Params(weight.clone(), requires_grad=False)
    else:
        m = bnb.nn.Embedding4bit(v, d, quant_type=scheme)
        m.weight = bnb.nn.Params4bit(weight.clone(), requires_grad=False, quant_type=scheme, blocksize=blocksize)
    return m.to("cpu")


def bnb_state(prefix, m):
    """The layer's table as Linear8bitLt / Linear4bit.state_dict() lay the same
    parameters out (Embedding8bit / Embedding4bit.state_dict() raise NotImplementedError
    in bitsandbytes 0.50): Int8Params' rows and SCB; Params4bit's codes and its packed
    QuantState."""
    if isinstance(m, bnb.nn.Embedding8bit):
        return {f"{prefix}weight": m.weight.data, f"{prefix}SCB": m.weight.SCB, f"{prefix}weight_format": torch.tensor(0, dtype=torch.uint8)}
    out = {f"{prefix}weight": m.weight.data}
    for k, t in m.weight.quant_state.as_dict(packed=True).items():
        out[f"{prefix}weight.{k}"] = t
    return out


def bnb_tables():
    """Tables bitsandbytes quantized, in its state-dict layouts, with the rows its own
    layers give for `ids` (bnb_tables.safetensors): tests/save.rs loads them with
    QuantizedTable::from_bitsandbytes and looks the same rows up."""
    gen = torch.Generator().manual_seed(20261209)
    ids = torch.tensor([0, 5, 63, 17, 17, 40])
    tensors = {}
    for prefix, scheme in [("int8.", "int8_rowwise"), ("nf4.", "nf4"), ("fp4.", "fp4")]:
        m = bnb_layer(scheme, torch.randn(64, 128, generator=gen))
        tensors.update(bnb_state(prefix, m))
        tensors[f"{prefix}ids"] = ids.to(torch.int32)
        tensors[f"{prefix}expected"] = m(ids).detach()
    out = os.path.join(HERE, "bnb_tables.safetensors")
    meta = {"generator": "tests/reference/make_cases.py", "versions": json.dumps(VERSIONS),
            "made_by": "Embedding8bit(Int8Params) and Embedding4bit(Params4bit, blocksize 64, compress_statistics) on CPU; expected = their forward(ids)"}
    save_file({k: t.contiguous().numpy() for k, t in tensors.items()}, out, metadata=meta)
    print(f"{os.path.relpath(out)}: {len(tensors)} tensors")


def quantized_interop():
    """What bitsandbytes makes of quantized tables this library saved (tests/save.rs
    writes saved_quantized.safetensors): Int8Params and Params4bit.from_prequantized
    take them into Embedding8bit / Embedding4bit, whose forward rows are returned."""
    from safetensors.torch import load_file

    saved_path = os.path.join(HERE, "saved_quantized.safetensors")
    if not os.path.exists(saved_path):
        print(f"{os.path.relpath(saved_path)} is missing: run `WGPU_EMBED_WRITE_REFERENCE=1 cargo test --release --test save` first")
        return {}, ""
    saved = load_file(saved_path)
    ids = torch.tensor([0, 7, 47, 7, 30, 12])
    out = {}
    v, d = saved["int8.weight"].shape
    m8 = bnb.nn.Embedding8bit(v, d)
    p = bnb.nn.Int8Params(saved["int8.weight"], requires_grad=False, has_fp16_weights=False)
    p.SCB = saved["int8.SCB"]
    m8.weight = p
    out["quantized/int8/ids"], out["quantized/int8/out"] = ids.to(torch.int32), m8(ids).detach()
    for kind in ["nf4", "fp4"]:
        stats = {k[len(f"{kind}.weight."):]: t for k, t in saved.items() if k.startswith(f"{kind}.weight.")}
        m4 = bnb.nn.Embedding4bit(v, d, quant_type=kind)
        m4.weight = bnb.nn.Params4bit.from_prequantized(data=saved[f"{kind}.weight"], quantized_stats=stats, device="cpu")
        out[f"quantized/{kind}/ids"], out[f"quantized/{kind}/out"] = ids.to(torch.int32), m4(ids).detach()
    checked = (
        f"bitsandbytes {bnb.__version__}: Embedding8bit took Int8Params(int8.weight, has_fp16_weights=False) with int8.SCB; "
        "Embedding4bit took Params4bit.from_prequantized(nf4.weight / fp4.weight, their weight.* QuantState); "
        "their forward(ids) gave quantized/*/out"
    )
    return {k: t.contiguous().numpy() for k, t in out.items()}, checked


def parity_file():
    parity = CaseFile(seed=20261209, versions=VERSIONS)
    for make in [bnb_training_cases, axial_backward_cases]:
        make(parity)
    parity.save(os.path.join(HERE, "parity.safetensors"), "training parity: bitsandbytes' optimizer rules, the axial embeddings' backward")


def main():
    if sys.argv[1:] == ["parity"]:
        # One file alone: regenerating the others on another host moves their last bits.
        return parity_file()
    forward = CaseFile(seed=20261207, versions=VERSIONS)
    for make in [embedding_cases, bag_cases, layer_norm_cases, stable_cases, bert_cases, axial_cases, quantize_cases, quantized_cases]:
        make(forward)
    forward.save(os.path.join(HERE, "forward.safetensors"), "forward ops: PyTorch, bitsandbytes and transformers layers")
    training = CaseFile(seed=20261208, versions=VERSIONS)
    for make in [emb_backward_cases, bag_backward_cases, norm_backward_cases, optimizer_cases, topk_cases]:
        make(training)
    training.save(os.path.join(HERE, "training.safetensors"), "backward passes, optimizer steps and top-k retrieval")
    parity_file()
    total = sum(os.path.getsize(os.path.join(HERE, n)) for n in ["forward.safetensors", "training.safetensors", "parity.safetensors"])
    interop_checks()
    bnb_tables()
    # tbe.safetensors is make_tbe_cases.py's (fbgemm_gpu's environment), counted here too.
    extra = ["saved_sparse_adam.safetensors", "interop.safetensors", "saved_quantized.safetensors", "bnb_tables.safetensors", "tbe.safetensors", "tbe_training.safetensors"]
    total += sum(os.path.getsize(os.path.join(HERE, n)) for n in extra if os.path.exists(os.path.join(HERE, n)))
    assert total <= 14_000_000, f"the committed reference files are {total} bytes; keep them under 14 MB"
    print(f"{total} bytes in all; {json.dumps(VERSIONS)}")


if __name__ == "__main__":
    sys.exit(main())
