#!/usr/bin/env bash
# Training throughput and peak memory of Swin-T + VMT-Adapter on CPU for the grid of
# docs/benchmarks.md: image size 224/448, batch 2/8, 1/4/8 tasks. One process per
# configuration so that each peak RSS is its own. Configurations that exceed the memory
# limit (ulimit -v, default 20 GiB) are reported as such.
set -u
cd "$(dirname "$0")/.."
cargo build --release -q
limit_kib=${VMT_BENCH_MEM_KIB:-20971520}
for size in 224 448; do
  for batch in 2 8; do
    for tasks in 1 4 8; do
      out=$( (ulimit -v "$limit_kib"; ./target/release/vmt-hub bench train --backbone random:swin-t \
        --tasks "$tasks" --batch "$batch" --size "$size" --steps "${STEPS:-2}" --json) 2>&1 )
      if [ $? -eq 0 ]; then echo "$out"; else
        echo "{\"tasks\":$tasks,\"batch\":$batch,\"size\":$size,\"error\":\"failed under a $((limit_kib/1048576)) GiB address-space limit\"}"
      fi
    done
  done
done
