#!/usr/bin/env bash
# Compiles `--features cuda` (lib and binary) on a machine without a GPU or a CUDA
# toolkit, so that the CUDA build never rots: nvcc 13.0 and the CUDA headers come from
# PyPI into target/cuda-toolkit (installed once, then reused), and stub libraries with
# the real sonames stand in for the driver and the CUDA libraries at link time (the
# binary still needs them by name, so the real ones load where it runs). The recipe and
# why each piece is pinned: docs/cuda.md.
#
#   scripts/check-cuda-build.sh            # about 10 minutes on 2 cores the first time
#   scripts/check-cuda-build.sh --release  # the binary to carry to a GPU machine: release,
#                                          # no debug info, stripped, gzipped into target/gpu
#
# Env: VMT_CUDA_TOOLKIT (where the pip packages go), CARGO_TARGET_DIR (default
# target/cuda, apart from the CPU build so that neither invalidates the other).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
toolkit=${VMT_CUDA_TOOLKIT:-$root/target/cuda-toolkit}
C=$toolkit/nvidia/cu13
if [ ! -x "$C/bin/nvcc" ]; then
  echo "installing nvcc 13.0 and the CUDA headers into $toolkit"
  python3 -m pip install -q --target "$toolkit" \
    "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-runtime==13.0.*" \
    "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*"
fi
export PATH=$C/bin:$PATH CUDA_ROOT=$C CUDA_PATH=$C CUDA_TOOLKIT_ROOT_DIR=$C
# sm_90: the H100 and H200 machines.
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
nvcc --version | tail -2

stubs=$toolkit/stubs
mkdir -p "$stubs"
echo 'void vmt_hub_cuda_link_stub(void) {}' > "$stubs/stub.c"
for lib in cuda:libcuda.so.1 cudart:libcudart.so.13 cublas:libcublas.so.13 \
  cublasLt:libcublasLt.so.13 curand:libcurand.so.10 nvrtc:libnvrtc.so.13; do
  name=${lib%%:*} soname=${lib#*:}
  [ -f "$stubs/lib$name.so" ] || cc -shared -fPIC -Wl,-soname,"$soname" -o "$stubs/lib$name.so" "$stubs/stub.c"
done

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/cuda}
export RUSTFLAGS="-L $stubs -C link-arg=-Wl,--unresolved-symbols=ignore-all"
profile=debug
flags=()
if [ "${1:-}" = --release ]; then
  profile=release
  flags=(--release)
  export CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=true
fi
cargo build "${flags[@]}" --features cuda --lib
# The binary keeps the driver and the runtime in its needed list (the stubs resolve no
# symbol, so the linker's --as-needed would otherwise drop them): the real ones load
# where it runs. Passed to the binary alone, so the dependencies' build is reused.
cargo rustc "${flags[@]}" --features cuda --bin vmt-hub -- \
  -C link-arg=-Wl,--push-state,--no-as-needed -C link-arg=-lcuda -C link-arg=-lcudart \
  -C link-arg=-lcublas -C link-arg=-lcublasLt -C link-arg=-lcurand -C link-arg=-lnvrtc \
  -C link-arg=-Wl,--pop-state
bin=$CARGO_TARGET_DIR/$profile/vmt-hub
# The binary asks for the real driver and runtime by name.
readelf -d "$bin" | grep -E 'NEEDED.*(libcuda|libcudart)' || {
  echo "$bin does not link the CUDA driver and runtime" >&2
  exit 1
}
echo "cuda build: ok ($bin)"
if [ "$profile" = release ]; then
  mkdir -p "$root/target/gpu"
  gzip -9 -c "$bin" >"$root/target/gpu/vmt-hub.gz"
  echo "to carry: target/gpu/vmt-hub.gz ($(du -h "$root/target/gpu/vmt-hub.gz" | cut -f1));" \
    "there: gunzip -c target/gpu/vmt-hub.gz > vmt-hub && chmod +x vmt-hub"
fi
