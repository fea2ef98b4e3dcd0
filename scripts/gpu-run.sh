#!/usr/bin/env bash
# Runs the carried harness binary on the GPU machine:
#   bash scripts/gpu-run.sh verify
#   bash scripts/gpu-run.sh bench --out "$OUT"
# The binary loads libcuda and libcublas at run time. The GPU image has the driver's libcuda on
# the loader path but cuBLAS only inside Python wheels (nvidia-cublas), so this finds that
# library directory (and NCCL's) to LD_LIBRARY_PATH before starting the harness.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${HARNESS_BIN:-$root/target/release/harness}
if [[ ! -x $bin ]]; then
  echo "gpu-run: $bin not found; build it with 'cargo build --release --features cuda -p harness' and carry target/release/harness" >&2
  exit 1
fi

roots=(/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
if command -v python3 >/dev/null; then
  while IFS= read -r p; do roots+=("$p/nvidia"); done < <(
    python3 -c 'import site; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null || true)
fi
if ! ldconfig -p 2>/dev/null | grep -q 'libcublas\.so\.13'; then
  for r in "${roots[@]}"; do
    [[ -d $r ]] || continue
    lib=$(find "$r" -maxdepth 3 -name 'libcublas.so.13*' -print -quit 2>/dev/null || true)
    if [[ -n $lib ]]; then
      export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      echo "gpu-run: using cuBLAS from $(dirname "$lib")"
      break
    fi
  done
fi
# NCCL (expert parallelism): the nvidia-nccl wheel ships libnccl.so.2, but cudarc opens
# libnccl.so; give it that name in a private directory.
if ! ldconfig -p 2>/dev/null | grep -q 'libnccl\.so '; then
  for r in "${roots[@]:-}"; do
    [[ -n $r && -d $r ]] || continue
    nccl=$(find "$r" -maxdepth 3 -name 'libnccl.so.2*' -print -quit 2>/dev/null || true)
    if [[ -n $nccl ]]; then
      shim=$(mktemp -d /tmp/dsv3-nccl.XXXXXX)
      ln -s "$nccl" "$shim/libnccl.so"
      export LD_LIBRARY_PATH="$shim:$(dirname "$nccl")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      echo "gpu-run: using NCCL from $(dirname "$nccl")"
      break
    fi
  done
fi
exec "$bin" "$@"
