"""The case file format of the conformance suite (FORMAT.md: `__metadata__["cases"]`,
inputs as `ID/ROLE`, expected values as `ID/expected/NAME`), shared by the generators
(make_cases.py, make_tbe_cases.py). Imports torch, numpy and safetensors only."""

import json
import os

import numpy as np
import torch
from safetensors.numpy import save_file


class CaseFile:
    """Cases and their tensors, checked against the intent of each case."""

    def __init__(self, seed, versions, generator="tests/reference/make_cases.py"):
        self.cases, self.tensors = [], {}
        self.versions, self.generator = versions, generator
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)

    def randn(self, *shape):
        return self.rng.standard_normal(shape).astype(np.float32)

    def ints(self, high, *shape, dtype=np.int64, low=0):
        return self.rng.integers(low, high, size=shape).astype(dtype)

    def add(self, cid, op, params, inputs, compute, atol=1e-5, rtol=1e-5, error=False):
        """`compute(**torch inputs)` gives {output: tensor}; it raising is a refusal."""
        assert all(c["id"] != cid for c in self.cases), cid
        names = {}
        for role, value in inputs.items():
            if value is None:
                continue
            name = f"{cid}/{role}"
            self.tensors[name] = np.ascontiguousarray(value)
            names[role] = name
        torch_inputs = {r: torch.from_numpy(np.array(v)) for r, v in inputs.items() if v is not None}
        case = {"id": cid, "op": op, "params": params, "inputs": names}
        try:
            outputs = compute(**torch_inputs)
        except Exception as e:  # the reference's refusal, kept as its message
            if not error:
                raise AssertionError(f"{cid}: the reference refused it: {e}") from e
            case.update(expect_error=True, reference_error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
            self.cases.append(case)
            return
        if error:
            raise AssertionError(f"{cid}: meant as a refusal, but the reference accepted it")
        # Names starting with "_" are judge-only expectations (FORMAT.md: a top-k case's
        # stored table, `_table`), not outputs the runner writes.
        case.update(expect_error=False, outputs=sorted(n for n in outputs if not n.startswith("_")), atol=atol, rtol=rtol)
        for name, t in outputs.items():
            t = t.detach()
            if t.is_sparse:
                raise AssertionError(f"{cid}/{name}: sparse output")
            arr = t.numpy()
            if arr.dtype == np.float64:
                arr = arr.astype(np.float32)
            self.tensors[f"{cid}/expected/{name}"] = np.ascontiguousarray(arr)
        self.cases.append(case)

    def save(self, path, description):
        meta = {
            "cases": json.dumps(self.cases),
            "format": "wgpu-embed-cases/1",
            "generator": self.generator,
            "versions": json.dumps(self.versions),
            "description": description,
        }
        save_file(self.tensors, path, metadata=meta)
        ops = sorted({c["op"] for c in self.cases})
        refusals = sum(c["expect_error"] for c in self.cases)
        print(f"{os.path.relpath(path)}: {len(self.cases)} cases ({refusals} refusals), {os.path.getsize(path)} bytes; ops: {', '.join(ops)}")
