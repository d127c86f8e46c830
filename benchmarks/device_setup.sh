#!/usr/bin/env bash
# Prepare the lent GPU machine for a real-model run. The 98 MB GGUF exceeds one call's 64 MiB transfer, so it
# travels in two halves in two back-to-back calls (carry .devcarry/a, then .devcarry/b; see README "GPU runs");
# each call runs this script, which stashes what it got outside the repository (kept while the machine is warm)
# and, once both halves are there, joins and checks them. Prints the path of the joined GGUF.
set -euo pipefail
S=/root/slimq-carry
mkdir -p "$S"
for d in .devcarry/a .devcarry/b; do
  [ -d "$d" ] && cp -rn "$d"/. "$S"/
done
if [ ! -f "$S/model.gguf" ] && [ -f "$S/part00" ] && [ -f "$S/part01" ]; then
  cat "$S/part00" "$S/part01" > "$S/model.gguf.tmp"
  want=$(cut -d' ' -f1 "$S/SHA")
  got=$(sha256sum "$S/model.gguf.tmp" | cut -d' ' -f1)
  [ "$want" = "$got" ] || { echo "joined GGUF checksum mismatch" >&2; exit 3; }
  mv "$S/model.gguf.tmp" "$S/model.gguf"
  rm -f "$S/part00" "$S/part01"
fi
python3 -c "import gguf" 2>/dev/null || python3 -m pip install --no-deps -q "$S"/gguf-*.whl
[ -f "$S/model.gguf" ] && echo "$S/model.gguf" || echo "waiting for the other half" >&2
