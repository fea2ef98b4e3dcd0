#!/usr/bin/env bash
# Runs the carried harness binary (or dsv3) on the GPU machine:
#   bash scripts/gpu-run.sh verify
#   bash scripts/gpu-run.sh bench --out "$OUT"
#   bash scripts/gpu-run.sh dsv3 bench --synthetic full-width --mtp-cost   # the carried dsv3
#   bash scripts/gpu-run.sh session "$OUT"   # verify, then bench --all (kernels, peers, ceilings and
#                                            # the full-width model and MTP step costs)
#   bash scripts/gpu-run.sh sanitize "$OUT"  # compute-sanitizer memcheck + racecheck on quick suites
#                                            # (carry .gpu-tools/ from scripts/fetch-gpu-tools.sh)
# The binary loads libcuda and libcublas at run time. The GPU image has the driver's libcuda on
# the loader path but cuBLAS only inside Python wheels (nvidia-cublas), so this finds that
# library directory (and NCCL's) to LD_LIBRARY_PATH before starting the harness.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${HARNESS_BIN:-$root/target/release/harness}
dsv3=${DSV3_BIN:-$root/target/release/dsv3}
need() {
  if [[ ! -x $1 ]]; then
    echo "gpu-run: $1 not found; build it with 'cargo build --release --features cuda -p $2' and carry target/release/$(basename "$1")" >&2
    exit 1
  fi
}
if [[ ${1:-} == dsv3 ]]; then need "$dsv3" model; else need "$bin" harness; fi

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
# compute-sanitizer: on PATH, in the CUDA toolkit, or unpacked from the carried wheel.
find_sanitizer() {
  local s
  s=$(command -v compute-sanitizer || true)
  [[ -z $s && -x /usr/local/cuda/bin/compute-sanitizer ]] && s=/usr/local/cuda/bin/compute-sanitizer
  if [[ -z $s ]]; then
    local whl
    whl=$(ls "$root"/.gpu-tools/nvidia_cuda_sanitizer_api-*.whl 2>/dev/null | head -n 1 || true)
    if [[ -n $whl ]]; then
      local dir=/tmp/dsv3-sanitizer
      [[ -x $dir/nvidia/cu13/bin/compute-sanitizer ]] ||
        python3 -m zipfile -e "$whl" "$dir" >/dev/null
      chmod +x "$dir/nvidia/cu13/bin/compute-sanitizer"
      s=$dir/nvidia/cu13/bin/compute-sanitizer
    fi
  fi
  echo "$s"
}

case ${1:-} in
  sanitize)
    out=${2:?usage: gpu-run.sh sanitize OUT_DIR}
    mkdir -p "$out"
    san=$(find_sanitizer)
    if [[ -z $san ]]; then
      echo "gpu-run: compute-sanitizer not found; run scripts/fetch-gpu-tools.sh here and carry .gpu-tools" >&2
      exit 1
    fi
    status=0
    # Quick suites only: memcheck slows kernels by 10-100x, racecheck more. Each tool's log
    # ends with its "ERROR SUMMARY" line.
    for tool in memcheck racecheck; do
      for suite in kernels mla-attention fp8-gemm moe-dispatch; do
        log="$out/$tool-$suite.log"
        timeout "${SANITIZE_TIMEOUT:-240}" "$san" --tool "$tool" --error-exitcode 3 \
          "$bin" verify --quick --suite "$suite" >"$log" 2>&1 || status=1
        echo "$tool $suite: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -n 1)"
      done
    done
    exit $status
    ;;
  dsv3)
    shift
    exec "$dsv3" "$@"
    ;;
  session)
    out=${2:?usage: gpu-run.sh session OUT_DIR}
    mkdir -p "$out"
    # On the GPU machine a skip is a failure: a run that lost its device must not look green.
    export DSV3_REQUIRE_GPU=1
    status=0
    # Each phase's wall time goes to stdout and $out/phases.txt, so the next session can size
    # its device time (the whole session should stay within 9 minutes on one H100).
    phase() {
      local name=$1 t0=$SECONDS rc=0
      shift
      "$@" || rc=$?
      printf 'phase %-8s %4d s  exit %d\n' "$name" $((SECONDS - t0)) "$rc" | tee -a "$out/phases.txt"
      [[ $rc == 0 ]] || status=1
    }
    : >"$out/phases.txt"
    phase verify "$bin" verify --json "$out/verify.json"
    # bench --all also runs the model end to end (the full-width synthetic model and the MTP
    # step costs) in the same process, writing their reports under $out/bench/.
    phase bench "$bin" bench --all --out "$out/bench"
    printf 'phase %-8s %4d s\n' total "$SECONDS" | tee -a "$out/phases.txt"
    exit $status
    ;;
esac
exec "$bin" "$@"
