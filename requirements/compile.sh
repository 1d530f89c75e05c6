#!/usr/bin/env bash
# Writes requirements/lock.txt: the exact versions of every dependency of lorafit[dev] for Python
# 3.10-3.12 on Linux x86-64, resolved against the newest releases today (`make lock` runs it, then the
# suite). torch is pinned by the Makefile (2.13.0, a CPU build on our machines) and left out of the
# lock with the CUDA packages only its CUDA build needs; its other requirements are locked.
# Usage: requirements/compile.sh [OUTPUT]   (default requirements/lock.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-requirements/lock.txt}
uv=${UV:-uv}
no_emit=(torch triton cuda-bindings cuda-pathfinder cuda-toolkit)
# Every nvidia-* package the resolution brings in is one of torch's CUDA runtime libraries.
args=()
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
"$uv" pip compile pyproject.toml --extra dev --universal --python-version 3.10 \
    --no-python-downloads -c requirements/torch.txt --no-header --quiet -o "$tmp"
for name in $(grep -oE '^nvidia-[a-z0-9-]+' "$tmp" | sort -u); do no_emit+=("$name"); done
for name in "${no_emit[@]}"; do args+=(--no-emit-package "$name"); done
{
  echo "# The exact versions lorafit's suite passed with (Python 3.10-3.12, Linux x86-64)."
  echo "# Written by \`make lock\` (requirements/compile.sh); install with \`make install\`."
  echo "# torch is pinned in requirements/torch.txt and installed first (CPU build); CUDA packages left out."
  "$uv" pip compile pyproject.toml --extra dev --universal --python-version 3.10 \
      --no-python-downloads -c requirements/torch.txt --no-header --quiet "${args[@]}" -o "$out.body"
  cat "$out.body"; rm -f "$out.body"
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out ($(grep -cE '^[A-Za-z]' "$out") packages)"
