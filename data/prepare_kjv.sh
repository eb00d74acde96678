#!/usr/bin/env bash
# Writes the King James Bible (from Debian's bible-kjv packages) to data/cache/kjv.txt as plain
# text, one verse per line without the "Ge1:1" references. Idempotent: a complete file is kept.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/data/cache/kjv.txt"
expected_lines=31102  # verses from Gen 1:1 to Rev 22:21
if [ -f "$out" ] && [ "$(wc -l < "$out")" -eq "$expected_lines" ]; then
  echo "kjv: $out is present ($(wc -c < "$out") bytes)"
  exit 0
fi
if ! command -v bible >/dev/null 2>&1; then
  echo "kjv: the 'bible' command is missing: install bible-kjv and bible-kjv-text (launch/setup.sh does)" >&2
  exit 1
fi
mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
bible -f Gen1:1-Rev22:21 | sed -E 's/^[0-9]?[A-Za-z]+[0-9]+:[0-9]+ //' | grep -v '^$' > "$tmp"
lines=$(wc -l < "$tmp")
if [ "$lines" -ne "$expected_lines" ]; then
  echo "kjv: expected $expected_lines verses, got $lines" >&2
  exit 1
fi
mv "$tmp" "$out"
trap - EXIT
echo "kjv: wrote $out ($(wc -c < "$out") bytes, $lines verses)"
