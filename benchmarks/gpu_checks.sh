#!/usr/bin/env bash
# The checks that need a GPU, in one go (about 10 minutes on one H100/H200), for a session that has one:
#   issue 23: the packed-attention flash-varlen test and the trainer benchmark's GPU row (1b, bf16);
#   issue 24: the FSDP2 tests with CUDA present and the planner against the measured 1b peak;
#   the QLoRA tests (bitsandbytes, if installed).
# Run from the repository root with vlmtune installed (pip install -e ".[test]"); results go to $OUT
# (default ./gpu-results): pytest.txt, trainer_1b.jsonl, plan_memory_1b.jsonl, train_step_1b.jsonl.
set -uo pipefail
out="${OUT:-gpu-results}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 2)" || {
    echo "gpu_checks.sh: no CUDA device here; these checks need one" >&2
    exit 2
}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
status=0
timeout 240 python -m pytest -q -rs -p no:cacheprovider \
    "tests/test_packing.py::test_varlen_kernel_on_cuda_equals_the_loop" tests/test_qlora.py tests/test_fsdp.py \
    -m "not slow" 2>&1 | tee "$out/pytest.txt" || status=1
cd benchmarks || exit 2
export PYTHONPATH="${PWD%/benchmarks}${PYTHONPATH:+:$PYTHONPATH}"
timeout 300 python trainer.py --model 1b --samples 48 --batch-size 8 --rounds 2 --cache \
    2>&1 | tee "../$out/trainer_1b.jsonl" || status=1
timeout 120 python plan_memory.py 2>&1 | tee "../$out/plan_memory_1b.jsonl" || status=1
timeout 120 python train_step.py --models 1b 2>&1 | tee "../$out/train_step_1b.jsonl" || status=1
exit $status
