#!/usr/bin/env bash
# The prepared device check (one call, under 8 minutes on one H100/H200): the CUDA tests, then the
# benchmarks on CUDA (PGD fp32 / bf16 / bf16+compile and the bf16-fp32 accuracy gap, training
# steps, BERT-Attack, the training step's text side, the data pipeline with 16 workers), merged
# into $OUT/gpu_check.json. Logs and JSON go to $OUT (the device tool's output folder), or
# results/gpu when run by hand.
#
# The device image has torch, transformers, matplotlib, scipy, pyyaml, tqdm and safetensors but
# not open_clip_torch, ftfy and torchattacks: carry them as wheels (see docs/benchmarks.md, "GPU runs"):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl \
#       open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 torchattacks==3.5.1
# then call the device tool with carry [".whl"] and the command: bash bench/gpu_check.sh
set -uo pipefail
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/cuda-tests.log"
python3 bench/train.py --device cuda --repeats 3 --output "$OUT/train-cuda.json" 2>&1 | tee "$OUT/train.log"
python3 bench/pgd.py --device cuda --output "$OUT/pgd-cuda.json" 2>&1 | tee "$OUT/pgd.log"
python3 bench/text_attack.py --device cuda --output "$OUT/text-cuda.json" 2>&1 | tee "$OUT/text.log"
python3 bench/text_attack.py --config train-text --device cuda --output "$OUT/train-text-cuda.json" 2>&1 | tee "$OUT/train-text.log"
# the batch pipeline on the 16-core machine (2, cpu_count and 16 workers) and the one-pass suite;
# the loader figure only (the suite part needs the MiniLM package, 88 MB, over the carry limit)
python3 bench/data_pipeline.py --loader-only --device cuda --output "$OUT/data-pipeline-cuda.json" 2>&1 | tee "$OUT/data-pipeline.log"
python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
merged = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*-cuda.json"))}
merged["cuda_tests_tail"] = (out / "cuda-tests.log").read_text().splitlines()[-3:]
(out / "gpu_check.json").write_text(json.dumps(merged, indent=2))
print(f"wrote {out / 'gpu_check.json'}")
PY
