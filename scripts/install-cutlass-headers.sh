#!/usr/bin/env bash
# Installs the pinned CUTLASS / CuTe headers (the nvidia-cutlass wheel) under <repo>/.cuda/cutlass,
# for the interpreter's layout tests (kernels/emulate/tests/layouts_vs_cute.cpp): they check the
# emulated wgmma / TMA layouts against CuTe's, compiled on the host. Headers only, nothing is built.
#
# Result: .cuda/cutlass/include -> the wheel's cutlass_library/source/include (cute/, cutlass/).
# Idempotent and quiet: a stamp file records the pin, and nothing is done when it matches.
# install-cuda-toolchain.sh runs this at its end; it wipes .cuda when its own pins change, and
# this script then reinstalls.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dest="${DSV3_CUTLASS_DEST:-$repo/.cuda/cutlass}"
pin=nvidia-cutlass==4.2.0.0
stamp="$dest/.installed"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$pin" && -f "$dest/include/cute/tensor.hpp" ]]; then
  exit 0
fi

python=${PYTHON:-python3}
rm -rf "$dest"
mkdir -p "$dest"
echo "installing CUTLASS headers ($pin) into $dest" >&2
# --no-deps: only the headers are wanted, not the Python package's runtime dependencies.
"$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-warn-script-location \
  --no-deps --target "$dest/site" "$pin"

include="$dest/site/cutlass_library/source/include"
if [[ ! -f "$include/cute/tensor.hpp" ]]; then
  echo "error: cute/tensor.hpp not found in the installed wheel under $dest/site" >&2
  exit 1
fi
ln -sfn "$include" "$dest/include"
echo "$pin" >"$stamp"
