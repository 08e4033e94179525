#!/usr/bin/env bash
# The documented distillation settings search: chosen on VALID only (test is read once, after).
#
#   bash bench/quality/distill_search.sh TEACHER_CHECKPOINT [ROOT] [overrides...]
#
# One knob at a time from the defaults of conf/distill/dllm2rec.yaml, seed 42, the CPU demo's
# settings (soft labels on every training prefix): Hydra multiruns, each run in its own directory
# under ROOT (default result/distill_search), then `summarize ROOT --split valid` prints the
# validation metrics of every run's best checkpoint beside the keys it changed. The winner on
# valid NDCG@10 becomes the default; `python -m bench.quality.distill --seeds 42 1 2` then reads test once.
# Each run is a full `distill` (~5 min on 2 cores); set OMP_NUM_THREADS to share the machine.
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then sed -n "2,/^set /p" "$0" | sed "\$d; s/^# \{0,1\}//"; exit 0; fi
teacher=${1:?usage: bench/quality/distill_search.sh TEACHER_CHECKPOINT [ROOT] [overrides...]}
root=${2:-result/distill_search}
shift $(( $# >= 2 ? 2 : 1 ))
run=(uv run --frozen distill -m experiment=cpu_demo "paths.result_dir=$root"
     "distill.teacher_checkpoint_path=$teacher" trainer.enable_progress_bar=false "$@")

sweeps=(
  "distill.lam=0.7"                                               # the defaults
  "distill.lam=0,1.5"                                             # no ranking loss; more of it
  "distill.ranking_loss=listwise"
  "distill.ed_weight=0"                                           # no embedding distillation
  "distill.consistency_weight=original"                           # as in the DLLM2Rec code
  "distill.consistency_masks_history=false"                       # student's top-K unmasked
  "distill.gamma_confidence=0 distill.gamma_consistency=0"        # position weight alone
  "distill.gamma_position=0 distill.gamma_consistency=0"          # confidence weight alone
  "distill.gamma_position=0 distill.gamma_confidence=0"           # consistency weight alone
)
for sweep in "${sweeps[@]}"; do
  echo "[$(date +%H:%M:%S)] distill -m $sweep" >&2
  # shellcheck disable=SC2086  # a sweep is several overrides
  "${run[@]}" $sweep > /dev/null
done
uv run --frozen summarize "$root" --split valid
