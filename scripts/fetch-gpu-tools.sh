#!/usr/bin/env bash
# Downloads the tools a GPU session carries besides the binaries into <repo>/.gpu-tools/
# (git-ignored): compute-sanitizer 13.0 from the pinned nvidia-cuda-sanitizer-api wheel. The GPU
# machine reaches no registry, so the wheel (14 MB) travels with the call's `carry` and
# `gpu-run.sh sanitize` unpacks it there. Idempotent.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dest="$repo/.gpu-tools"
pin=nvidia-cuda-sanitizer-api==13.0.85
mkdir -p "$dest"
if ! ls "$dest"/nvidia_cuda_sanitizer_api-13.0.85-*.whl >/dev/null 2>&1; then
  python3 -m pip download --quiet --disable-pip-version-check --no-deps "$pin" -d "$dest"
fi
ls -l "$dest"
