#!/usr/bin/env bash
# Writes requirements/lock.txt: the exact versions of every dependency of lorafit[dev] for Python
# 3.10-3.12 on Linux x86-64 (`uv pip compile --universal`: one file, environment markers where versions
# differ by Python). torch is pinned in requirements/torch.txt, installed first by the Makefile (2.13.0, a
# CPU build on our machines) and left out of the lock with the CUDA packages only its CUDA build needs;
# its other requirements are locked.
# Usage: requirements/compile.sh            resolve everything against the newest releases (`make lock`)
#        requirements/compile.sh --keep     keep every pin of the current lock, add what pyproject.toml
#                                           gained (uv prefers the versions already in its output file)
set -euo pipefail
cd "$(dirname "$0")/.."
out=requirements/lock.txt
uv=${UV:-uv}
keep=0
[ "${1:-}" = "--keep" ] && keep=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ $keep = 1 ]; then cp "$out" "$tmp/all.txt"; cp "$out" "$tmp/lock.txt"; fi
compile() {  # compile OUTPUT [uv args...]
  local o=$1; shift
  "$uv" pip compile pyproject.toml --extra dev --universal --python-version 3.10 --no-python-downloads \
      -c requirements/torch.txt --no-header --quiet "$@" -o "$o"
}
compile "$tmp/all.txt"
no_emit=(torch triton cuda-bindings cuda-pathfinder cuda-toolkit)
# Every nvidia-* package the resolution brings in is one of torch's CUDA runtime libraries.
for name in $(grep -oE '^nvidia-[a-z0-9-]+' "$tmp/all.txt" | sort -u); do no_emit+=("$name"); done
args=()
for name in "${no_emit[@]}"; do args+=(--no-emit-package "$name"); done
compile "$tmp/lock.txt" "${args[@]}"
{
  echo "# The exact versions lorafit's suite passed with (Python 3.10-3.12, Linux x86-64)."
  echo "# Written by \`make lock\` (requirements/compile.sh); install with \`make install\`."
  echo "# torch is pinned in requirements/torch.txt and installed first (CPU build); CUDA packages left out."
  grep -v '^# \(The exact\|Written by\|torch is pinned\)' "$tmp/lock.txt"
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out ($(grep -cE '^[A-Za-z]' "$out") packages)"
