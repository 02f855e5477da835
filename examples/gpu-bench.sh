#!/usr/bin/env bash
# The bench on a real GPU through Vulkan, on a bare Linux x86-64 machine with an NVIDIA
# driver but no Vulkan loader (as rented or lent GPU machines often are). Writes
# results.csv, summary.md and gbps_vs_dim.svg into OUT (default target/gpu-bench).
#
#   bash examples/gpu-bench.sh [OUT] [-- extra bench arguments]
#
# 1. The Vulkan loader: when `ldconfig -p` has no libvulkan.so.1, Debian's libvulkan1 is
#    unpacked from its .deb: from .gl/*.deb when they were brought along (machines
#    without a network), else downloaded with `apt-get download`.
# 2. The NVIDIA ICD: when the loader's usual folders have none, the driver's own
#    nvidia_icd.json (e.g. /usr/local/nvidia/share/vulkan/icd.d) is named in VK_DRIVER_FILES.
# 3. The bench: $WGPU_EMBED_BENCH_BIN when set (built elsewhere with
#    `cargo build --release --features bench --example bench`: machines without crates.io),
#    else built here with cargo.
# 4. Run on Vulkan (WGPU_BACKEND=vulkan), on the adapter whose name contains
#    $WGPU_EMBED_ADAPTER (default NVIDIA), within 8 minutes (timeout 480 s).
# 5. PyTorch's layers at the same shapes on the same GPU (examples/gpu-bench-torch.py),
#    into OUT/torch.csv, when python3's torch sees a CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/gpu-bench}
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
mkdir -p "$out"

if ! ldconfig -p | grep -q 'libvulkan\.so\.1'; then
    debs=(.gl/libvulkan1_*.deb)
    if [ ! -e "${debs[0]}" ]; then
        tmp=$(mktemp -d)
        (cd "$tmp" && apt-get download libvulkan1 >/dev/null)
        debs=("$tmp"/libvulkan1_*.deb)
    fi
    echo "gpu-bench: unpacking ${debs[0]} (the Vulkan loader)"
    dpkg -x "${debs[0]}" /
    ldconfig
fi

if [ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ] && ! ls /usr/share/vulkan/icd.d/nvidia* /etc/vulkan/icd.d/nvidia* >/dev/null 2>&1; then
    for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/local/share/vulkan/icd.d/nvidia_icd.json; do
        if [ -f "$icd" ]; then
            export VK_DRIVER_FILES=$icd
            echo "gpu-bench: VK_DRIVER_FILES=$icd"
            break
        fi
    done
fi

bin=${WGPU_EMBED_BENCH_BIN:-}
if [ -z "$bin" ]; then
    cargo build --release --features bench --example bench
    bin=target/release/examples/bench
fi

export WGPU_BACKEND=vulkan
timeout 480 "$bin" --adapter "${WGPU_EMBED_ADAPTER:-NVIDIA}" --out "$out" "$@"
echo "gpu-bench: $out/summary.md, $out/results.csv, $out/gbps_vs_dim.svg"

# 5. PyTorch's own layers at the same shapes on the same GPU, when torch sees it.
if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    timeout 240 python3 examples/gpu-bench-torch.py --device cuda --out "$out/torch.csv"
fi
