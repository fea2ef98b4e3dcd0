#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler (nvcc + headers) from PyPI wheels into <repo>/.cuda/.
#
# Why 13.0: the GPU machines run driver 580 (CUDA 13.0); PTX from a newer nvcc cannot be loaded
# there. All five nvidia-* parts are pinned together, otherwise pip mixes in newer parts.
# Idempotent and quiet: a stamp file records the pinned set, and nothing is done when it matches.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dest="$repo/.cuda"
pins=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
)
stamp="$dest/.installed"
want="${pins[*]}"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$dest/bin/nvcc" ]]; then
  # The CuTe headers of the interpreter's layout tests (own pin and stamp, under .cuda/cutlass).
  exec bash "$repo/scripts/install-cutlass-headers.sh"
fi

python=${PYTHON:-python3}
rm -rf "$dest"
mkdir -p "$dest"
echo "installing CUDA 13.0 toolchain into $dest" >&2
"$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-warn-script-location \
  --target "$dest/site" "${pins[@]}"

# The wheels put everything under site/nvidia/cu13/{bin,include,lib,nvvm}: expose it as a
# CUDA_HOME-style tree so nvcc finds its own pieces and build scripts can use $dest/bin/nvcc.
root=$(dirname "$(dirname "$(find "$dest/site" -path '*/bin/nvcc' -type f | head -n 1)")")
if [[ ! -x "$root/bin/nvcc" ]]; then
  echo "error: nvcc not found in the installed wheels under $dest/site" >&2
  exit 1
fi
for d in bin include lib nvvm; do
  [[ -e "$root/$d" ]] && ln -sfn "$root/$d" "$dest/$d"
done
"$dest/bin/nvcc" --version >/dev/null
echo "$want" >"$stamp"
bash "$repo/scripts/install-cutlass-headers.sh"
