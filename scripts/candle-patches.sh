#!/usr/bin/env bash
# vendor/candle-core is candle-core 0.11.1 from crates.io plus the patch series in
# vendor/patches (vendor/PATCHES.md says what each patch does, its test and its upstream
# text). This script rebuilds the vendored crate from the pristine one.
#
#   scripts/candle-patches.sh check           # pristine + every patch == vendor/candle-core
#   scripts/candle-patches.sh tree K DIR      # pristine + patches 1..K into DIR (K=0: stock)
#   scripts/candle-patches.sh prove           # each patch's test fails on the tree without it
#                                             # (and passes with it): slow, one build per patch
#
# The pristine crate comes from crates.io (static.crates.io, checked against its sha256)
# unless cargo's cache already holds it.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.11.1
sha256=d11c8be87cfbaef9ebb62fb3f850d1fc8e00cc1d11d393fdbe55a4d5c2cdb325
cache=$(realpath -m "${VMT_PATCH_CACHE:-target/candle-patches}")
mkdir -p "$cache"

pristine_crate() {
  local file="$cache/candle-core-$version.crate"
  if [ ! -f "$file" ]; then
    local cached
    cached=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/candle-core-$version.crate 2>/dev/null | head -1 || true)
    if [ -n "$cached" ]; then
      cp "$cached" "$file"
    else
      curl -sSfL --retry 3 -o "$file.part" \
        "https://static.crates.io/crates/candle-core/candle-core-$version.crate"
      mv "$file.part" "$file"
    fi
  fi
  echo "$sha256  $file" | sha256sum -c --quiet - >&2 || {
    echo "candle-patches: $file is not candle-core $version as published (sha256 differs)" >&2
    exit 1
  }
  echo "$file"
}

# tree K DIR: the pristine crate with patches 1..K applied, in DIR (replaced).
tree() {
  local k=$1 dir=$2 crate
  crate=$(pristine_crate)
  rm -rf "$dir" && mkdir -p "$dir"
  tar xzf "$crate" -C "$dir" --strip-components=1
  local n=0
  for p in vendor/patches/*.patch; do
    n=$((n + 1))
    [ "$n" -le "$k" ] || break
    patch -d "$dir" -p1 --quiet --no-backup-if-mismatch --forward <"$p" || {
      echo "candle-patches: $p does not apply on patches 1..$((n - 1))" >&2
      exit 1
    }
  done
  # What cargo writes next to an unpacked crate (vendor/candle-core has it too).
  printf '{"v":1}' >"$dir/.cargo-ok"
}

count() { ls vendor/patches/*.patch | wc -l; }

case "${1:-check}" in
  check)
    dir="$cache/rebuilt"
    tree "$(count)" "$dir"
    if diff -r "$dir" vendor/candle-core >"$cache/diff.txt"; then
      echo "candle-patches: vendor/candle-core == candle-core $version + $(count) patches"
    else
      cat "$cache/diff.txt" >&2
      echo "candle-patches: vendor/candle-core differs from candle-core $version + the patch series" >&2
      exit 1
    fi
    # The build uses the vendored crate, not the one from crates.io.
    grep -q '^candle-core = { path = "vendor/candle-core" }' Cargo.toml || {
      echo "candle-patches: Cargo.toml's [patch.crates-io] does not point candle-core at vendor/candle-core" >&2
      exit 1
    }
    cargo metadata --format-version 1 2>/dev/null | python3 -c '
import json, sys
pkgs = [p for p in json.load(sys.stdin)["packages"] if p["name"] == "candle-core"]
assert len(pkgs) == 1 and pkgs[0]["source"] is None and "vendor/candle-core" in pkgs[0]["manifest_path"], pkgs
print("candle-patches: the workspace builds", pkgs[0]["manifest_path"])'
    ;;
  tree)
    tree "$2" "$3"
    ;;
  prove)
    # For each tree T = pristine + patches 1..T: patch T's test must pass on it and patch
    # T+1's test must fail on it (patch N's test: patch_N_* in tests/candle_patches.rs or
    # tests/candle_patch_N.rs). One target folder for all trees: only candle-core and what
    # depends on it is rebuilt from one tree to the next.
    n=$(count)
    run_patch_test() { # patch tree -> exit status of patch's test on that tree
      local k=$1 t=$2 file=candle_patches
      [ -f "tests/candle_patch_$k.rs" ] && file=candle_patch_$k
      CARGO_TARGET_DIR="$cache/target-prove" cargo test --quiet --test "$file" \
        --config "patch.crates-io.candle-core.path=\"$cache/tree\"" \
        -- --include-ignored "patch_${k}_" >"$cache/prove-$k-on-$t.log" 2>&1
    }
    for t in $(seq 0 "$n"); do
      tree "$t" "$cache/tree"
      for k in "$t" $((t + 1)); do
        [ "$k" -ge 1 ] && [ "$k" -le "$n" ] || continue
        set +e; run_patch_test "$k" "$t"; rc=$?; set -e
        if [ "$k" -gt "$t" ]; then want="must fail: patch $k not applied"; good=$([ $rc -ne 0 ] && echo ok || echo WRONG)
        else want="must pass"; good=$([ $rc -eq 0 ] && echo ok || echo WRONG); fi
        echo "patch $k's test on patches 1..$t: exit $rc ($want): $good"
        [ "$good" = ok ] || { echo "see $cache/prove-$k-on-$t.log" >&2; exit 1; }
      done
    done
    ;;
  *)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
