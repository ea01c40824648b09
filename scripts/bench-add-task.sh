#!/usr/bin/env bash
# add-task, measured two ways (results go to docs/benchmarks.md):
# 1. cost: one add-task step (shared adapter frozen, only the new task's KEMs and decoder
#    trained) against one full single-task step, Swin-T 224x224, batch 2, alternating;
# 2. quality: human_parts added with add-task to a bundle trained on semseg, sal and
#    normals, against human_parts trained jointly with them (same data, steps, seed).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/vmt-hub
for i in 1 2 3; do
  $bin bench train --tasks 1 --batch 2 --size 224 --steps 3 --json
  $bin bench train --tasks 1 --batch 2 --size 224 --steps 3 --add-task --json
done

size=${SIZE:-96} steps=${STEPS:-600} count=${COUNT:-400}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
$bin data synth --out "$work/data" --count "$count" --size "$size" --seed 3 >/dev/null
common=(--data "$work/data" --steps "$steps" --batch 8 --image-size "$size" --seed 7 --quiet)
$bin --registry "$work/reg" train "${common[@]}" --tasks semseg,human_parts,sal,normals \
  --run-dir "$work/joint" --tag m:joint >/dev/null
$bin --registry "$work/reg" train "${common[@]}" --tasks semseg,sal,normals \
  --run-dir "$work/three" --tag m:three >/dev/null
$bin --registry "$work/reg" add-task m:three --task human_parts "${common[@]}" \
  --run-dir "$work/added" --tag m:added >/dev/null
for tag in m:joint m:added; do
  echo "$tag"
  $bin --registry "$work/reg" eval "$tag" --data "$work/data" --image-size "$size" \
    --tasks human_parts
done
