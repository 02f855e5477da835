"""Writes the small transformer encoder layer the ONNX Runtime interop test runs on the
output of the library's BERT embedding block (web/tests/ort.html).

    python3 make_encoder.py OUT.onnx [--dim 384] [--heads 4] [--ffn 1536] [--seed 0]

Input "x" [batch, tokens, dim] (float32, both dynamic); output "y", same shape: a
post-LayerNorm encoder layer as in BERT (multi-head self-attention, then a GELU
feed-forward), with seeded random weights. Made with the `onnx` package, opset 17
(LayerNormalization), IR version 8 so that older runtimes load it too.
"""

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=1536)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    d, h, f = a.dim, a.heads, a.ffn
    if d % h:
        raise SystemExit(f"--dim {d} is not a multiple of --heads {h}")
    rng = np.random.default_rng(a.seed)
    inits, nodes = [], []

    def weight(name, shape, scale):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def const(name, values, dtype=np.int64):
        inits.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def node(op, inputs, out, **attrs):
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def linear(x, name, n_in, n_out):
        y = node("MatMul", [x, weight(f"{name}.w", (n_in, n_out), n_in**-0.5)], f"{name}.mm")
        return node("Add", [y, weight(f"{name}.b", (n_out,), 0.02)], f"{name}.out")

    def layer_norm(x, name, out=None):
        inits.append(numpy_helper.from_array((1 + 0.1 * rng.standard_normal(d)).astype(np.float32), f"{name}.g"))
        beta = weight(f"{name}.b", (d,), 0.02)
        return node("LayerNormalization", [x, f"{name}.g", beta], out or f"{name}.out", axis=-1, epsilon=1e-12)

    # [b, t, d] -> [b, heads, t, d/h] and back.
    split_shape = const("split_shape", [0, 0, h, d // h])
    merge_shape = const("merge_shape", [0, 0, d])

    def heads(x, name):
        x = node("Reshape", [x, split_shape], f"{name}.split")
        return node("Transpose", [x], f"{name}.heads", perm=[0, 2, 1, 3])

    q = heads(linear("x", "q", d, d), "q")
    k = heads(linear("x", "k", d, d), "k")
    v = heads(linear("x", "v", d, d), "v")
    kt = node("Transpose", [k], "k.t", perm=[0, 1, 3, 2])
    scores = node("MatMul", [q, kt], "scores")
    scale = const("scale", (d // h) ** -0.5, np.float32)
    probs = node("Softmax", [node("Mul", [scores, scale], "scores.scaled")], "probs", axis=-1)
    ctx = node("MatMul", [probs, v], "ctx")
    ctx = node("Transpose", [ctx], "ctx.t", perm=[0, 2, 1, 3])
    ctx = node("Reshape", [ctx, merge_shape], "ctx.merged")
    attn = linear(ctx, "attn_out", d, d)
    h1 = layer_norm(node("Add", ["x", attn], "res1"), "ln1")
    # GELU (erf form, as BERT's): 0.5 x (1 + erf(x / sqrt 2)).
    u = linear(h1, "ffn_in", d, f)
    erf = node("Erf", [node("Mul", [u, const("inv_sqrt2", 2**-0.5, np.float32)], "u.scaled")], "u.erf")
    gelu = node("Mul", [node("Mul", [u, const("half", 0.5, np.float32)], "u.half"), node("Add", [erf, const("one", 1.0, np.float32)], "erf1")], "gelu")
    ffn = linear(gelu, "ffn_out", f, d)
    layer_norm(node("Add", [h1, ffn], "res2"), "ln2", out="y")

    graph = helper.make_graph(
        nodes,
        "encoder_layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "tokens", d])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="wgpu-embed tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, a.out)


if __name__ == "__main__":
    main()
