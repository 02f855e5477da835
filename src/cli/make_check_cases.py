#!/usr/bin/env python3
"""Builds check_cases.safetensors, the built-in cases of `wgpu-embed check`.

    python3 src/cli/make_check_cases.py [CASE_FILE...]

(default: the repository's reference cases, tests/reference/*.safetensors). Copies the small cases of the case files (refusals included),
and the smallest case of every op whatever its size, with their expected values, so the binary carries them and a user
needs no files. Needs numpy and safetensors.
"""
import json
import os
import sys

from safetensors import safe_open
from safetensors.numpy import save_file

MAX_CASE_BYTES = 16 * 1024  # inputs + expected outputs of one case


def main(sources):
    cases, data, size = [], {}, {}
    for src in sources:
        with safe_open(src, "np") as f:
            file_cases = json.loads(f.metadata()["cases"])
            for case in file_cases:
                names = list(case["inputs"].values())
                names += [f"{case['id']}/expected/{o}" for o in case.get("outputs", [])]
                data[case["id"]] = {n: f.get_tensor(n) for n in names}
                size[case["id"]] = sum(t.nbytes for t in data[case["id"]].values())
            cases += file_cases
    smallest = {}
    for case in cases:
        if not case["expect_error"]:
            best = smallest.get(case["op"])
            if best is None or size[case["id"]] < size[best]:
                smallest[case["op"]] = case["id"]
    tensors, kept = {}, []
    for case in cases:
        if size[case["id"]] <= MAX_CASE_BYTES or smallest.get(case["op"]) == case["id"]:
            tensors.update(data[case["id"]])
            kept.append(case)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "check_cases.safetensors")
    save_file(tensors, out, metadata={"cases": json.dumps(kept)})
    ops = sorted({c["op"] for c in kept})
    print(f"{len(kept)} of {len(cases)} cases, {os.path.getsize(out)} bytes, ops: {', '.join(ops)}")


if __name__ == "__main__":
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "reference")
    main(sys.argv[1:] or [os.path.join(root, "forward.safetensors"), os.path.join(root, "training.safetensors")])
