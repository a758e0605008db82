#!/usr/bin/env bash
# Do the README's and docs' commands work after the documented install, in a fresh venv?
#
#   bash scripts/fresh_install_check.sh [WORKDIR]     # default: a new temporary directory
#
# Creates a venv (python3 -m venv) in WORKDIR, installs this checkout as the README says
# (python3 -m pip install -e ".[test]"; needs the package index), then runs each documented
# command that needs no network and no GPU on the smallest model (the built-in `tiny`; `kiln demo`
# as the README shows it, on SqueezeNet), and a few scripts at their smallest settings. Then it adds
# the `int8` extra (python3 -m pip install -e ".[test,int8]", as docs/int8.md says for the INT8
# report) and runs the INT8 report. Commands that need a cross compiler or nvcc run only where
# those are installed. Prints PASS/FAIL per command (logs in WORKDIR/logs) and exits 1 if any failed.
# Minutes of pip and a few of compiling: not part of the test suite.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d -t kiln-fresh-XXXXXX)}"
mkdir -p "$work/logs" "$work/run"
work="$(cd "$work" && pwd)"
logs="$work/logs"
passed=() failed=() skipped=()
n=0

# check NAME CMD...: run CMD in $work/run (output to a log), record PASS/FAIL
check() {
  local name="$1"; shift
  n=$((n + 1))
  local log
  log="$logs/$(printf '%02d' "$n")-$(echo "$name" | tr -c 'A-Za-z0-9_.-' '_').log"
  local t0=$SECONDS
  if (cd "$work/run" && "$@") >"$log" 2>&1; then
    passed+=("$name")
    printf 'PASS  %4ds  %s\n' $((SECONDS - t0)) "$name"
  else
    failed+=("$name")
    printf 'FAIL  %4ds  %s  (log: %s)\n' $((SECONDS - t0)) "$name" "$log"
    tail -n 5 "$log" | sed 's/^/        /'
  fi
}
skip() { skipped+=("$1 ($2)"); printf 'SKIP        %s  (%s)\n' "$1" "$2"; }

echo "fresh venv in $work (repo $repo)"
python3 -m venv "$work/venv" || { echo "FAIL: python3 -m venv"; exit 1; }
# shellcheck disable=SC1091
source "$work/venv/bin/activate"
unset PYTHONPATH  # only what the install put into the venv
export TVM_NUM_THREADS="${TVM_NUM_THREADS:-2}"
cd "$repo"

# --- the README's install -------------------------------------------------------------------
check 'pip install -e ".[test]"' bash -c "cd '$repo' && python3 -m pip install -q --upgrade pip && python3 -m pip install -q -e '.[test]'"
if [ "${#failed[@]}" -ne 0 ]; then echo "install failed; stopping"; exit 1; fi
python3 -m pip freeze >"$logs/freeze-test.txt"

# --- README: set-up, quickstart, command line (tiny instead of resnet50) ---------------------
check "kiln --help" kiln --help
check "python3 -m compiler --help" python3 -m compiler --help
check "kiln compile --help" kiln compile --help
check "kiln demo" kiln demo --threads 2
check "kiln targets" kiln targets
check "kiln targets --json" kiln targets --json
check "kiln example" kiln example
check "kiln example tiny -o tiny.onnx" kiln example tiny -o tiny.onnx
check "kiln compile tiny.onnx -o tiny.so" kiln compile tiny.onnx -o tiny.so
check "kiln run --print-top --bench --reference" kiln run tiny.so --print-top 5 --bench 20 --reference tiny.onnx --threads 2
check "kiln run -o out.npz" kiln run tiny.so --fill random -o out.npz
check "kiln profile --reference --json" kiln profile tiny.so --reference tiny.onnx --threads 2 --json profile.json
check "kiln inspect tiny.so" kiln inspect tiny.so
check "kiln inspect tiny.so --json" kiln inspect tiny.so --json
check "kiln inspect tiny.onnx --passes" kiln inspect tiny.onnx --passes
check "kiln compile --layout auto" kiln compile tiny.onnx -o tiny_auto.so --layout auto
check "kiln compile --input-shape (symbolic batch)" kiln compile tiny.onnx -o tiny_sym.so --input-shape 'data:?x3x32x32'
check "Python API (README)" python3 - <<'PY'
import numpy as np
from compiler import CompileOptions, compile_model, load
from compiler.profile import format_profile, profile_library

report = compile_model("tiny.onnx", "tiny_api.so", target="host", input_shapes={"data": (1, 3, 32, 32)})
print(report.kernels, report.tuned_kernels, report.seconds_total)
m = load("tiny_api.so", threads=2)
print(m.inputs, m.outputs)
x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
print({k: v.shape for k, v in m.run(x).items()}, m.benchmark(20).describe())
print(format_profile(profile_library(m, reference="tiny.onnx")))
compile_model("tiny.onnx", "tiny_api2.so", CompileOptions(target="host"))
PY
check "scripts/runtime_example.py tiny.so" python3 "$repo/scripts/runtime_example.py" tiny.so

# --- docs/int8.md (tiny, calibration from random inputs) ---------------------------------------
check "calibration data (numpy)" python3 -c "import numpy as np; np.savez('calib.npz', data=np.random.default_rng(0).uniform(0, 1, (16, 1, 3, 32, 32)).astype('float32'))"
check "kiln quantize -o tiny.kq" kiln quantize tiny.onnx --calibration calib.npz -o tiny.kq
check "kiln compile --int8-plan" kiln compile tiny.onnx -o tiny_int8.so --int8-plan tiny.kq
check "kiln compile --precision int8 --calibration" kiln compile tiny.onnx -o tiny_int8b.so --precision int8 --calibration calib.npz
check "kiln quantize-report --json" kiln quantize-report tiny.onnx --calibration calib.npz --json layers.json
check "kiln run int8 --reference" kiln run tiny_int8.so --reference tiny.onnx --threads 2
check "kiln compile QDQ model (ORT quantize_static)" python3 - <<'PY'
import subprocess

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static


class Reader(CalibrationDataReader):
    def __init__(self):
        self.items = iter({"data": s} for s in np.load("calib.npz")["data"])

    def get_next(self):
        return next(self.items, None)


quantize_static("tiny.onnx", "tiny_qdq.onnx", Reader(), quant_format=QuantFormat.QDQ)
subprocess.run(["kiln", "compile", "tiny_qdq.onnx", "-o", "tiny_qdq.so"], check=True)
PY

# --- docs/tuning.md (a few trials) -------------------------------------------------------------
check "kiln tune --trials 4" kiln tune tiny.onnx --db tuning --trials 4 --no-progress
check "kiln tune-report -o curve.png" kiln tune-report tuning -o curve.png
check "kiln compile --db" kiln compile tiny.onnx --db tuning -o tiny_tuned.so

# --- docs/targets.md: cross and CUDA builds (no GPU needed, but the toolchains) ----------------
if command -v aarch64-linux-gnu-g++ >/dev/null 2>&1; then
  check "kiln compile --target rpi4" kiln compile tiny.onnx --target rpi4 -o tiny-rpi4.so
  check "kiln inspect tiny-rpi4.so" kiln inspect tiny-rpi4.so
else
  skip "kiln compile --target rpi4" "no aarch64-linux-gnu-g++"
fi
if command -v nvcc >/dev/null 2>&1; then
  check "kiln compile --target cuda-sm80" kiln compile tiny.onnx -o tiny-cuda.so --target cuda-sm80
  check "kiln compile --precision fp16 --target cuda-sm80" kiln compile tiny.onnx -o tiny-fp16.so --precision fp16 --target cuda-sm80
else
  skip "kiln compile --target cuda-sm80" "no nvcc"
fi

# --- scripts at their smallest settings (as tests/test_scripts.py runs them) -------------------
s="$repo/scripts"
check "scripts/bench.py" python3 "$s/bench.py" --models tiny --rounds 1 --runs 2 --out bench.json
check "scripts/fusion_report.py" python3 "$s/fusion_report.py" --models tiny --latency --rounds 1 --runs 2 --out fusion.json
check "scripts/profile_zoo.py" python3 "$s/profile_zoo.py" --models tiny --runs 2 --out profile_zoo.json
check "scripts/load_test.py" python3 "$s/load_test.py" --calls 200 --threads 2 --out load_test.json
check "scripts/bench_int8_kernel.py" python3 "$s/bench_int8_kernel.py" --threads 1 --rounds 1 --calls 2 --out bench_int8_kernel.json
check "scripts/bench_dynamic_quant.py" python3 "$s/bench_dynamic_quant.py" --models mlp --small --rounds 1 --runs 2 --out bench_dq.json
check "scripts/int8_models.py digits" python3 "$s/int8_models.py" digits --workdir int8_work --n-test 20
check "scripts/fuzz_files.py" python3 "$s/fuzz_files.py" --cases 20 --out fuzz_files.json
check "scripts/fuzz_hypothesis.py" python3 "$s/fuzz_hypothesis.py" --examples 50 --out fuzz_hypothesis.json
check "scripts/benchmarks_doc.py" python3 "$s/benchmarks_doc.py" --out benchmarks.md
check "pytest --collect-only (every test module imports)" bash -c "cd '$repo' && python3 -m pytest -q --collect-only -m '' -p no:cacheprovider >'$logs/collect.txt' 2>&1 || { tail -30 '$logs/collect.txt'; exit 1; }"

# --- docs/int8.md: the INT8 report wants the int8 extra ----------------------------------------
check 'pip install -e ".[test,int8]"' bash -c "cd '$repo' && python3 -m pip install -q -e '.[test,int8]'"
python3 -m pip freeze >"$logs/freeze-int8.txt"
check "scripts/int8_report.py --models digits" python3 "$s/int8_report.py" --models digits --runs 2 --calibration 20 --json int8_report.json
check "scripts/int8_models.py ppocr_cls" python3 "$s/int8_models.py" ppocr_cls --workdir int8_work --n-test 20

echo
echo "passed ${#passed[@]}, failed ${#failed[@]}, skipped ${#skipped[@]} (venv and logs in $work)"
for f in "${failed[@]}"; do echo "  failed: $f"; done
for f in "${skipped[@]}"; do echo "  skipped: $f"; done
[ "${#failed[@]}" -eq 0 ]
