#!/usr/bin/env bash
# Make this x86 machine able to build and run kiln's ARM64 libraries (tests/test_arm.py):
# install the cross compiler and qemu (Debian packages, only if missing), then download the
# aarch64 TVM runtime and build the qemu runner into ~/.cache/kiln/aarch64 (once; idempotent).
# Run from anywhere after kiln is installed (`pip install -e .`). Uses sudo when not root.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null 2>&1 || missing+=(qemu-user)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "prepare_arm: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

"${PYTHON:-python3}" - <<'PY'
import logging

from targets.emulation import prepare_arm_runtime

logging.basicConfig(level=logging.INFO, format="prepare_arm: %(message)s")
print(f"prepare_arm: aarch64 runner ready: {prepare_arm_runtime()}")
PY
