#!/usr/bin/env bash
# The CPU recipe at a higher resolution on one GPU: several seeds on the same lesion-grouped split,
# combined into an ensemble, then distilled into ONE model that is calibrated and evaluated.
# Sized for at most 10 minutes on one NVIDIA H200 (Lite0 at 224 px trained at about 2,700 photos/s
# there: a 15-epoch member takes about 1.5 minutes, the trust fit and test evaluation about 2).
#
#   bash scripts/gpu_recipe.sh DATA OUT      # DATA: a HAM10000 folder, OUT: where the runs go
#
# The student's weights are also written in parts of at most 15 MiB (OUT/parts/), the largest file a
# device run hands back; join them with `cat OUT/parts/skin_model.safetensors.part-* > skin_model.safetensors`
# and check the sha256 in OUT/parts/model_card.json. Knobs (environment): SEEDS, SIZE, BUDGET_MIN
# (stage 1 minutes per model), EPOCHS; EXTRA holds options added to every `skin-model train`
# (the test suite runs this script on tiny data on a CPU with SKIN_MODEL_ALLOW_CPU=1).
set -euo pipefail
data=${1:?usage: gpu_recipe.sh DATA OUT}
out=${2:?usage: gpu_recipe.sh DATA OUT}
seeds=${SEEDS:-"1 2 3"}
size=${SIZE:-224}
budget=${BUDGET_MIN:-1.5}
epochs=${EPOCHS:-15}
read -r -a extra <<< "${EXTRA:-}"
if [ -z "${SKIN_MODEL_ALLOW_CPU:-}" ]; then
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script is for a GPU')"
fi

common=(--data "$data" --split-seed 0 --backbone efficientnet-lite0 --image-size "$size" --freeze-blocks 5
        --lr 0.0003 --batch-size 128 --ema 0.998 --epochs "$epochs" --time-budget-min "$budget")
members=()
for seed in $seeds; do
  skin-model train "${common[@]}" --seed "$seed" --views 1 --sequence-steps 200 --fit-trust false \
    --out "$out/seed$seed" "${extra[@]}"
  members+=("$out/seed$seed")
done
teacher=${members[0]}
if [ "${#members[@]}" -gt 1 ]; then
  skin-model combine "${members[@]}" --out "$out/ensemble"
  teacher=$out/ensemble
fi
# The student: same recipe, seed 0, soft labels from the teacher; then the trust layer and the test figures.
skin-model train "${common[@]}" --seed 0 --teacher "$teacher" --distil-weight 0.5 --heatmap-photos 200 \
  --out "$out/student" "${extra[@]}"

mkdir -p "$out/parts"
split -b 15M -d "$out/student/skin_model.safetensors" "$out/parts/skin_model.safetensors.part-"
cp "$out/student/model_card.json" "$out/parts/"
ls -l "$out/parts"
