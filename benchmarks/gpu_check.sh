#!/usr/bin/env bash
# On one CUDA GPU: the tests marked `cuda` (skipped on CPU machines), the flex path against
# the sdpa path, then bf16 training steps of the 0.16B preset (sdpa, then flex + torch.compile),
# printing tokens/s and MFU.
#     bash benchmarks/gpu_check.sh          (from the repository root, the package installed)
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
echo "== tests marked cuda"
python -m pytest -q -m cuda tests/
echo "== flex vs sdpa (0.16B, 4096 tokens a row, forward + backward in bf16)"
python benchmarks/flex_vs_sdpa.py --device cuda --preset 0.16B --seq-len 4096 --rows 2
PAPER="data.seq_len=4096 model.max_seq_len=4096 data.batch_size=4 image.size=256"
echo "== 0.16B bf16 training step, sdpa"
python benchmarks/train_throughput.py --device cuda --precision bf16 --presets 0.16B --steps 10 $PAPER
echo "== 0.16B bf16 training step, flex + torch.compile"
python benchmarks/train_throughput.py --device cuda --precision bf16 --presets 0.16B --steps 10 $PAPER \
    model.attention=flex train.compile=true
