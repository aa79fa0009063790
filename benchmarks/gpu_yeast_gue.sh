#!/usr/bin/env bash
# One GPU session: yeast pretraining (tiny, small and a wider small, side by side), GUE fine-tuning from scratch
# (prom_core_all and tf/0, 3 seeds each, scored on both strands), the genome benchmark and report of the yeast models, and the
# inference benchmark. Results are packed into $OUT/results.tgz after every stage.
#   DATA=dir-with-yeast_r64-and-gue OUT=dir bash benchmarks/gpu_yeast_gue.sh
# Environment: YEAST_RUNS (some of tiny,small,wide; none: none), GUE_TASKS (some of gue_prom_core_all,gue_tf0; empty: none),
# TRAIN_TIME (DD:HH:MM:SS per yeast run), STEPS, GUE_TIME, GUE_EPOCHS, GUE_PATIENCE, BENCH_BUDGET (s),
# EXTRA (overrides for every train/finetune command, e.g. for a CPU smoke run), YEAST_EXTRA, GUE_EXTRA,
# BENCH_EXTRA, INFER_ARGS; STAGES (default "train,benchmark,inference": run them in separate calls when one
# command may not outlast ~10 minutes; runs/gpu stays on the machine between calls while it is held).
set -u
DATA=${DATA:-../shared/data}
OUT=${OUT:-benchmarks/out}
R=runs/gpu
TRAIN_TIME=${TRAIN_TIME:-00:00:09:00}
STEPS=${STEPS:-200000}
GUE_TIME=${GUE_TIME:-00:00:04:00}
GUE_EPOCHS=${GUE_EPOCHS:-10}
GUE_PATIENCE=${GUE_PATIENCE:-3}
YEAST_RUNS=${YEAST_RUNS:-tiny,small,wide}
GUE_TASKS=${GUE_TASKS-gue_prom_core_all,gue_tf0}
EXTRA=${EXTRA:-}
mkdir -p "$R" "$OUT"
T0=$(date +%s)
STAGES=${STAGES:-train,benchmark,inference}
stamp() { echo "== $(( $(date +%s) - T0 )) s: $*"; }
want() { [[ ",$STAGES," == *",$1,"* ]]; }
# metrics, logs and reports in one archive; each trained model's weights (at most ~13 MB) beside it, one file each
pack() { tar czf "$OUT/results.tgz.tmp" --exclude='*.ckpt' --exclude='checkpoints' --exclude='tensorboard' \
           --exclude='tokens.u8' --exclude='regions.u8' --exclude='*.safetensors' -C "$R" . 2>/dev/null \
         && mv "$OUT/results.tgz.tmp" "$OUT/results.tgz"
         for m in "$R"/yeast_*/model; do [[ -d $m ]] && mkdir -p "$OUT/models/$(basename "$(dirname "$m")")" \
           && cp "$m"/* "$OUT/models/$(basename "$(dirname "$m")")/"; done; }
dnalm() { python3 -c 'import sys; from dnalm.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }

# every module the stages import, checked before the GPU time is spent
python3 - <<'PREFLIGHT' || exit 1
import importlib.util
need = ["hydra", "omegaconf", "lightning", "torchmetrics", "pyfaidx", "sklearn", "scipy", "pandas", "pyarrow",
        "matplotlib", "logomaker", "optuna", "safetensors", "tokenizers"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    raise SystemExit(f"missing Python modules: {', '.join(missing)} (bring them as wheels)")
PREFLIGHT

if want train; then
stamp prepare yeast
dnalm prepare genome="$DATA/yeast_r64/GCA_000146045.2_R64_genomic.fna.gz" \
  annotation="$DATA/yeast_r64/GCA_000146045.2_R64_genomic.gff.gz" name=yeast_r64 out=$R/yeast_prepared \
  split.strategy=records 'split.val=[BK006947.3]' 'split.test=[BK006948.2,BK006949.2]' > $R/prepare.log 2>&1

stamp train yeast tiny and small, GUE from scratch
# tiny, small, and small widened to 256 channels (3.3M parameters, more dropout), side by side
for run in "tiny:hyena_tiny:" "small:hyena_small:" \
           "wide:hyena_small:model.d_model=256 model.d_inner=1024 model.resid_dropout=0.2 model.embed_dropout=0.2"; do
  IFS=: read -r name experiment sizes <<< "$run"
  [[ ",$YEAST_RUNS," == *",$name,"* ]] || continue
  dnalm train experiment=yeast/$experiment data.prepared=$R/yeast_prepared out=$R/yeast_$name $sizes \
    trainer.max_time=$TRAIN_TIME trainer.max_steps=$STEPS trainer.progress_bar=false optim.warmup_steps=300 \
    $EXTRA ${YEAST_EXTRA:-} > $R/yeast_$name.log 2>&1 &
done
# a from-scratch HyenaDNA classifier backbone: 4 layers, width 256 (3.2M parameters), context 1026
python3 - "$R/scratch" <<'EOF'
import sys
from dnalm.models.hyena import HyenaConfig, HyenaLM
from dnalm.models.io import save_pretrained
from dnalm.tokenizers import CharTokenizer
save_pretrained(HyenaLM(HyenaConfig(d_model=256, n_layer=4, d_inner=1024, l_max=1026)), sys.argv[1],
                tokenizer=CharTokenizer())
EOF
for task in ${GUE_TASKS//,/ }; do
  for seed in 0 1 2; do
    dnalm finetune checkpoint=$R/scratch task=$task data_root="$DATA" out=$R/$task/seed$seed seed=$seed \
      trainer=gpu trainer.max_epochs=$GUE_EPOCHS trainer.max_time=$GUE_TIME trainer.progress_bar=false \
      optim.lr=1e-3 optim.weight_decay=0.1 data.rc_aug=true data.rc_eval=true task.patience=$GUE_PATIENCE save_model=false \
      $EXTRA ${GUE_EXTRA:-} > $R/${task}_seed$seed.log 2>&1 &
  done
done
wait
stamp trained
pack
fi

if want benchmark; then
stamp benchmark yeast models
models=$(for name in ${YEAST_RUNS//,/ }; do [[ -d $R/yeast_$name/model ]] && printf '%s,' "$R/yeast_$name/model"; done)
dnalm benchmark prepared=$R/yeast_prepared "models=[${models%,}]" \
  out=$R/benchmark ${BENCH_EXTRA:-} > $R/benchmark.log 2>&1
pack
fi

if want inference; then
stamp inference benchmark
python3 benchmarks/inference_bench.py --budget-s ${BENCH_BUDGET:-150} --out $R/inference.json ${INFER_ARGS:-} \
  > $R/inference.log 2>&1
pack
fi
stamp done
