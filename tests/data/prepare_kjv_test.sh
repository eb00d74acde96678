#!/usr/bin/env bash
# Tests data/prepare_kjv.sh with a stand-in `bible` command (so that it runs where the bible-kjv
# package is not installed): references stripped, atomic and idempotent, clear failures.
set -euo pipefail
script="$1/data/prepare_kjv.sh"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# A fake bible: 31102 verses in the real format ("Ge1:1 ...", "1Co13:4 ...", "Rev22:21 ...").
cat > "$tmp/bible" <<'FAKE'
#!/usr/bin/env bash
[ "$1" = "-f" ] && [ "$2" = "Gen1:1-Rev22:21" ] || { echo "bad args: $*" >&2; exit 2; }
echo "Ge1:1 In the beginning God created the heaven and the earth."
for i in $(seq 2 31100); do echo "1Co13:$i Verse $i: charity."; done
echo "Rev22:20 He which testifieth these things saith, Surely I come quickly. Amen."
echo "Rev22:21 The grace of our Lord Jesus Christ be with you all. Amen."
FAKE
chmod +x "$tmp/bible"

out="$tmp/cache/kjv.txt"
msg="$(BITQAT_BIBLE="$tmp/bible" "$script" "$out")"
[ "$msg" = "kjv: wrote $out ($(wc -c < "$out") bytes, 31102 verses)" ] || fail "message: $msg"
[ "$(head -1 "$out")" = "In the beginning God created the heaven and the earth." ] || fail "first line: $(head -1 "$out")"
[ "$(sed -n 2p "$out")" = "Verse 2: charity." ] || fail "second line: $(sed -n 2p "$out")"
[ "$(tail -1 "$out")" = "The grace of our Lord Jesus Christ be with you all. Amen." ] || fail "last line"
[ "$(wc -l < "$out")" -eq 31102 ] || fail "line count"
ls "$tmp/cache" | grep -q tmp && fail "temporary file left behind"

# Idempotent: a complete file is kept as it is, even without the bible command.
before="$(stat -c %Y.%s "$out")"
msg="$(BITQAT_BIBLE="$tmp/nothing" "$script" "$out")"
[ "$msg" = "kjv: $out is present ($(wc -c < "$out") bytes)" ] || fail "second run: $msg"
[ "$(stat -c %Y.%s "$out")" = "$before" ] || fail "complete file rewritten"

# An incomplete file is redone; a missing command and short output fail clearly, writing nothing.
head -5 "$out" > "$tmp/part.txt"
BITQAT_BIBLE="$tmp/bible" "$script" "$tmp/part.txt" > /dev/null
[ "$(wc -l < "$tmp/part.txt")" -eq 31102 ] || fail "incomplete file not redone"
if err="$(BITQAT_BIBLE="$tmp/nothing" "$script" "$tmp/a.txt" 2>&1)"; then fail "no error without bible"; fi
[[ "$err" == *"command is missing: install bible-kjv and bible-kjv-text"* ]] || fail "missing message: $err"
printf '#!/bin/sh\necho "Ge1:1 only one"\n' > "$tmp/short" && chmod +x "$tmp/short"
if err="$(BITQAT_BIBLE="$tmp/short" "$script" "$tmp/b.txt" 2>&1)"; then fail "no error for short output"; fi
[[ "$err" == *"expected 31102 verses"*"got 1"* ]] || fail "short message: $err"
[ ! -e "$tmp/a.txt" ] && [ ! -e "$tmp/b.txt" ] || fail "a failed run left a file"
[ -z "$(ls "$tmp" | grep '\.tmp\.')" ] || fail "a failed run left a temporary file"
echo "prepare_kjv: all checks passed"
