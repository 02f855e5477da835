#!/usr/bin/env bash
# Ours beside fbgemm_gpu's CPU TBE on this machine, in one run: the bench's TBE section
# on the default adapter, then fbgemm_gpu's CPU operators at the same shapes
# (examples/peers/fbgemm_tbe.py). fbgemm-gpu-cpu 1.9.0 loads against torch 2.14.1 only,
# so it gets a virtual environment of its own (.venv-fbgemm, made on first use).
# Writes examples/bench-results/peers-fbgemm.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${FBGEMM_VENV:-.venv-fbgemm}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r tests/reference/requirements-fbgemm.txt
fi
out=target/tbe-bench
cargo run --release --features bench --example bench -- --sections tbe --out "$out"
"$venv/bin/python" examples/peers/fbgemm_tbe.py --ours "$out/results.csv" --out examples/bench-results/peers-fbgemm.md
