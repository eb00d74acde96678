#!/usr/bin/env bash
# Writes the King James Bible (from Debian's bible-kjv packages) as plain text, one verse per line
# without the "Ge1:1 " references, so that a byte-level model learns English and not the markup.
# Usage: data/prepare_kjv.sh [OUT]   (OUT defaults to data/cache/kjv.txt, which is git-ignored)
# Idempotent: a complete file (all 31102 verses) is kept. Atomic: written to a temporary name, then
# renamed. BITQAT_BIBLE names the bible command (default: bible); tests use it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/data/cache/kjv.txt}"
bible_cmd="${BITQAT_BIBLE:-bible}"
expected_lines=31102  # verses from Gen 1:1 to Rev 22:21
if [ -f "$out" ] && [ "$(wc -l < "$out")" -eq "$expected_lines" ]; then
  echo "kjv: $out is present ($(wc -c < "$out") bytes)"
  exit 0
fi
if ! command -v "$bible_cmd" >/dev/null 2>&1; then
  echo "kjv: the '$bible_cmd' command is missing: install bible-kjv and bible-kjv-text (launch/setup.sh does)" >&2
  exit 1
fi
mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
"$bible_cmd" -f Gen1:1-Rev22:21 | sed -E 's/^[0-9]?[A-Za-z]+[0-9]+:[0-9]+ //' | { grep -v '^$' || true; } > "$tmp"
lines=$(wc -l < "$tmp")
if [ "$lines" -ne "$expected_lines" ]; then
  echo "kjv: expected $expected_lines verses from '$bible_cmd -f Gen1:1-Rev22:21', got $lines" >&2
  exit 1
fi
mv "$tmp" "$out"
trap - EXIT
echo "kjv: wrote $out ($(wc -c < "$out") bytes, $lines verses)"
