"""The ONNX graphs onnxruntime-web runs in the peer bench (web/bench/peers.mjs), and the
same tables for wgpu-embed, made with the `onnx` package.

    python3 make_peer_graphs.py OUT_DIR [--rows 30522] [--dim 384] [--block 64] [--seed 0]

Writes OUT_DIR/gather.onnx (Gather over an f32 [rows, dim] initializer),
OUT_DIR/gather_q4.onnx (com.microsoft GatherBlockQuantized: the same table as 4-bit
codes with zero point 8 and one f32 scale per `block` values of a row, absmax / 7),
OUT_DIR/layer_norm.onnx (LayerNormalization over dim, eps 1e-5) and
OUT_DIR/peers.safetensors (the f32 table, gamma and beta) for our side.
"""

import argparse
import json
import os
import struct

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def save(graph, path, opsets):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets], producer_name="wgpu-embed bench")
    model.ir_version = 10  # int4 initializers need IR 10
    onnx.checker.check_model(model)
    onnx.save(model, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--rows", type=int, default=30522)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    v, d, bs = a.rows, a.dim, a.block
    if d % bs or d % 2:
        raise SystemExit(f"--dim {d} must be a multiple of --block {bs} and even")
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    table = (rng.standard_normal((v, d)) * 0.05).astype(np.float32)
    gamma = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
    beta = (0.02 * rng.standard_normal(d)).astype(np.float32)

    ids = helper.make_tensor_value_info("ids", TensorProto.INT32, ["n"])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", d])
    g = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["out"], axis=0)], "gather", [ids], [out], [numpy_helper.from_array(table, "table")]
    )
    save(g, os.path.join(a.out, "gather.onnx"), [("", 17)])

    # 4-bit codes q in [0, 15] with zero point 8 (value = (q - 8) * scale), one scale per
    # block of a row, absmax / 7; packed two to a byte, low nibble first. The zero points
    # are given: onnxruntime-web's kernel takes 0 when they are absent.
    blocks = table.reshape(v, d // bs, bs)
    scales = np.abs(blocks).max(axis=2) / 7
    scales[scales == 0] = 1
    codes = (np.clip(np.rint(blocks / scales[:, :, None]), -7, 7) + 8).astype(np.uint8).reshape(v, d)

    def pack4(q):
        q = q.reshape(-1)
        return (q[0::2] | (q[1::2] << 4)).astype(np.uint8).tobytes()

    data = helper.make_tensor("data", TensorProto.UINT4, [v, d], pack4(codes), raw=True)
    zero_points = helper.make_tensor("zero_points", TensorProto.UINT4, list(scales.shape), pack4(np.full(scales.shape, 8, np.uint8)), raw=True)
    g = helper.make_graph(
        [
            helper.make_node(
                "GatherBlockQuantized", ["data", "ids", "scales", "zero_points"], ["out"], domain="com.microsoft", gather_axis=0, quantize_axis=1, block_size=bs
            )
        ],
        "gather_q4",
        [ids],
        [out],
        [data, numpy_helper.from_array(scales.astype(np.float32), "scales"), zero_points],
    )
    save(g, os.path.join(a.out, "gather_q4.onnx"), [("", 17), ("com.microsoft", 1)])

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", d])
    g = helper.make_graph(
        [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["out"], axis=-1, epsilon=1e-5)],
        "layer_norm",
        [x],
        [out],
        [numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(beta, "beta")],
    )
    save(g, os.path.join(a.out, "layer_norm.onnx"), [("", 17)])

    tensors = {"table": table, "gamma": gamma, "beta": beta}
    header, offset = {}, 0
    for name, t in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(a.out, "peers.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for t in tensors.values():
            f.write(t.tobytes())


if __name__ == "__main__":
    main()
