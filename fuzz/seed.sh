#!/usr/bin/env bash
# Seeds the fuzz corpus from the repository's fixtures and the shared corpus
# (hostile files and every format; files over 1 MB are left out so each
# execution stays fast, and the .md and .py files that describe or generate
# fixtures are not inputs). Run from anywhere; idempotent.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/corpus/sniff_decode"
mkdir -p "$out"
for dir in "$here/../tests/fixtures" "$here/../../shared/corpus/hostile" "$here/../../shared/corpus/formats"; do
  [ -d "$dir" ] || continue
  find "$dir" -type f -size -1024k ! -name '*.md' ! -name '*.py' -print0 | while IFS= read -r -d '' f; do
    cp "$f" "$out/$(sha1sum "$f" | cut -c1-16)"
  done
done
echo "seeded $(ls "$out" | wc -l) files into $out"
