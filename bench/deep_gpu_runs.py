"""The deep methods in their CPU preset (= the CLI's defaults) at every code length, on the GPU machine.

    python -m bench.deep_gpu --export var/gpu/openclipart_pretrained.npz               # here
    python3 -m bench.deep_gpu_runs var/gpu/openclipart_pretrained.npz dmsfh mmach      # GPU machine, $OUT set

Prints one JSON line per run (seconds, protocol metrics both ways) and saves each method's real-valued
query/database outputs to ``$OUT/<method>_real.npz`` for ``bench.dense_baseline --real`` at home.
The GPU machine has torch but not pydantic, onnx or FAISS: the two manifest names the trainers import
are stubbed there (graph export is not used); UDDH needs FAISS and runs on the CPU instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import types

import numpy as np

LENGTHS = {"dmsfh": (16, 32, 64), "mmach": (16, 32, 64)}


def stub_serving_stack() -> None:
    """Stand-ins for the modules the trainers import but do not use for training, where not installed."""
    if importlib.util.find_spec("pydantic") is None:
        import index  # noqa: F401  (the parent package of the stubs)

        bundle = types.ModuleType("index.bundle")
        bundle.__path__ = []
        manifest = types.ModuleType("index.bundle.manifest")
        manifest.INPUT_NAME, manifest.OUTPUT_NAME = "features", "codes"
        sys.modules |= {"index.bundle": bundle, "index.bundle.manifest": manifest}
    if importlib.util.find_spec("onnx") is None:
        onnx = types.ModuleType("onnx")
        onnx.TensorProto = onnx.helper = onnx.numpy_helper = None
        sys.modules["onnx"] = onnx


def main(path: str, methods: list[str]) -> None:
    stub_serving_stack()
    import torch

    from bench.deep_gpu import presets
    from index.codes import to_signs
    from training.evaluation.metrics import evaluate_codes

    data = dict(np.load(path, allow_pickle=False))
    for method in methods:
        saved = {}
        for bits in LENGTHS[method]:
            configs, train = presets(method, bits, "cuda", 32)
            started = time.perf_counter()
            hasher = train(data["train_image"], data["train_text"], data["train_labels"], configs["cpu_preset"])
            seconds = time.perf_counter() - started
            real = {
                f"{part}_{m}": np.asarray(hasher.encoders[m].real_codes(data[f"{part}_{m}"]), np.float32)
                for part in ("query", "database")
                for m in ("image", "text")
            }
            device = torch.cuda.get_device_name(0)
            row = {"method": method, "bits": bits, "device": device, "seconds": round(seconds, 1)}
            for direction, (q, d) in {"i2t": ("image", "text"), "t2i": ("text", "image")}.items():
                m = evaluate_codes(
                    to_signs(real[f"query_{q}"]),
                    to_signs(real[f"database_{d}"]),
                    data["query_labels"],
                    data["database_labels"],
                )
                row |= {f"{direction}_{k}": round(m[k], 4) for k in ("mAP", "mAP_tie_averaged", "MAP@50", "P@10")}
            print(json.dumps(row), flush=True)
            saved |= {f"{bits}_{k}": v for k, v in real.items()}
        np.savez(f"{os.environ['OUT']}/{method}_real.npz", **saved)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
