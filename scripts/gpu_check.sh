#!/usr/bin/env bash
# One prepared CUDA check. Two ways to run it:
#
#   scripts/gpu_check.sh                 # on a GPU machine with kiln installed: compile, run, compare, bench
#   scripts/gpu_check.sh prepare [ARCH]  # on a build machine without a GPU: compile the libraries and a
#                                        # runtime-only TVM bundle into gpu_bundle/ (for a GPU box that
#                                        # cannot install apache-tvm itself, e.g. one without network)
#   scripts/gpu_check.sh bundle [OUT]    # on that GPU box: run the check from gpu_bundle/, JSON into OUT
#
# The bundle exists because the full apache-tvm wheel (100 MB, 260 MB unpacked compiler) may not
# reach the GPU machine; the runtime alone is a few MB (TVM_USE_RUNTIME_LIB=1 mode).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-full}"
arch="${2:-sm_90}"
# ResNet-50 fp32 weights alone are 100 MB; the bundle carries what fits a 64 MB transfer.
BUNDLE_CASES="${BUNDLE_CASES:-resnet50:int8 squeezenet:fp32 squeezenet:fp16 squeezenet:int8 squeezenet:int8u}"

case "$mode" in
  full)
    python3 scripts/gpu_check.py --arch "$arch" --out "${OUT:-.}/gpu_check.json"
    ;;
  prepare)
    rm -rf gpu_bundle && mkdir -p gpu_bundle/site gpu_bundle/wheels
    python3 scripts/gpu_check.py --arch "$arch" --build-only gpu_bundle/libs --cases $BUNDLE_CASES
    tvm_dir=$(python3 -c "import tvm, os; print(os.path.dirname(tvm.__file__))")
    # Runtime-only TVM: Python sources and the runtime libraries, without the 260 MB compiler.
    cp -a "$tvm_dir" gpu_bundle/site/tvm
    rm -rf gpu_bundle/site/tvm/lib/libtvm_compiler.so gpu_bundle/site/tvm/{3rdparty,src,include,web}
    find gpu_bundle/site -name __pycache__ -prune -exec rm -rf {} +
    tar -C gpu_bundle/site -cJf gpu_bundle/tvm_runtime.tar.xz tvm && rm -rf gpu_bundle/site
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${GPU_PYTHON:-3.12}" \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
      -d gpu_bundle/wheels "apache-tvm-ffi==0.1.14.post0" "onnx2torch==1.5.15"  # onnx2torch: the PyTorch GPU reference
    echo "$arch" > gpu_bundle/arch
    du -sh gpu_bundle
    ;;
  bundle)
    out="${2:-${OUT:-.}}"
    python3 -m pip install -q --no-index --no-deps --target /tmp/kiln-site gpu_bundle/wheels/*.whl
    tar -C /tmp/kiln-site -xJf gpu_bundle/tvm_runtime.tar.xz
    export PYTHONPATH="/tmp/kiln-site:$PWD"
    export TVM_USE_RUNTIME_LIB=1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 scripts/gpu_check.py --prebuilt gpu_bundle/libs --arch "$(cat gpu_bundle/arch)" \
      --cases $BUNDLE_CASES --out "$out/gpu_check.json"
    ;;
  *) echo "usage: $0 [full|prepare [ARCH]|bundle [OUT]]" >&2; exit 2 ;;
esac
