#!/usr/bin/env python3
"""Copy this into your deployment: load a kiln library, feed numpy, print the top-5.

Needs only numpy and the TVM runtime (pip install apache-tvm==0.27.0.post1
apache-tvm-ffi==0.1.14.post0) plus kiln's compiler/runtime.py.

    python runtime_example.py model.so [image.npy]
"""

import sys

import numpy as np

from compiler.runtime import load

model = load(sys.argv[1])  # threads: this machine's cores; load(path, threads=4) to choose
spec = model.inputs[0]
if len(sys.argv) > 2:
    x = np.load(sys.argv[2], allow_pickle=False).astype(spec.dtype).reshape(spec.shape)
else:
    x = np.random.default_rng(0).standard_normal(spec.shape).astype(spec.dtype)

outputs = model.run({spec.name: x})
scores = next(iter(outputs.values())).reshape(-1)
for rank, i in enumerate(np.argsort(scores)[::-1][:5], 1):
    print(f"{rank}. class {i}: {scores[i]:.5f}")
print(model.benchmark(20).describe())
