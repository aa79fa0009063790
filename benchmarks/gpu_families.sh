#!/usr/bin/env bash
# The model families side by side on one GPU: yeast pretraining of every family's small experiment at once
# (HyenaDNA as the baseline of the same run), GUE fine-tuning of the pretrained encoders, the training speed of
# the state-space families beside Hyena, and the StripedHyena 2 (evo2-1b-shaped) speed rows. Results go to $OUT
# after every stage.
#   DATA=dir-with-yeast_r64-and-gue OUT=dir STAGES=yeast bash benchmarks/gpu_families.sh
#   DATA=... OUT=... STAGES=gue,speed GUE_MODELS="bert=runs/gpu/yeast_bert/model:optim.lr=1e-4 \
#     mamba=runs/gpu/yeast_mamba/model" bash benchmarks/gpu_families.sh
# Environment: RUNS (name:experiment[:overrides] entries, space separated; overrides comma-separated),
# TRAIN_TIME (DD:HH:MM:SS per yeast run), GUE_TASKS, GUE_SEEDS, GUE_TIME, GUE_EPOCHS, GUE_MODELS
# (name=checkpoint[:overrides] entries; the overrides come after GUE_EXTRA's), GUE_EXTRA, SPEED_MODELS,
# SPEED_MODES, SPEED_LENGTHS, SPEED_BUDGET (`dnalm speed`, STAGES=speed), PACK_MODELS, SH2_ARGS, EXTRA
# (overrides for every train/finetune command, e.g. for a CPU smoke run).
# $R/finished appears when the script ends (removed at its start): a run started in the background (setsid) in
# one command can be waited for in the next with `until [ -f $R/finished ]; do sleep 5; done`.
set -u
DATA=${DATA:-../shared/data}
OUT=${OUT:-benchmarks/out}
R=${R:-runs/gpu}
TRAIN_TIME=${TRAIN_TIME:-00:00:09:00}
TOKENIZER=${TOKENIZER:-$R/tokenizer_yeast_bpe4096}  # learnt from the training chromosomes unless it exists
RUNS=${RUNS:-"hyena:hyena_small bert:bert_small:model.tokenizer=$TOKENIZER stripedhyena:stripedhyena_small"}
GUE_TASKS=${GUE_TASKS:-gue_prom_core_all gue_tf0}
GUE_SEEDS=${GUE_SEEDS:-0 1 2}
GUE_TIME=${GUE_TIME:-00:00:04:00}
GUE_EPOCHS=${GUE_EPOCHS:-10}
GUE_MODELS=${GUE_MODELS:-}
EXTRA=${EXTRA:-}
STAGES=${STAGES:-yeast}
mkdir -p "$R" "$OUT"
rm -f "$R/finished"
OUT=$(cd "$OUT" && pwd)
T0=$(date +%s)
stamp() { echo "== $(( $(date +%s) - T0 )) s: $*"; }
want() { [[ ",$STAGES," == *",$1,"* ]]; }
dnalm() { python3 -c 'import sys; from dnalm.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }
# What comes back is a few files: $OUT/runs.tgz (metrics, configs and logs of every run) and the trained
# models named in PACK_MODELS (yeast run names) as $OUT/models.tar.part-* pieces of at most 15 MB
# (`cat models.tar.part-* | tar x` joins them).
PACK_MODELS=${PACK_MODELS:-bert mamba caduceus}
pack() {
  (cd "$R" && find . \( -name metrics.json -o -name config.yaml -o -name metrics.csv -o -name '*.log' \) \
     -not -path '*/model/*' -print0 | tar czf "$OUT/runs.tgz.tmp" --null -T - ) \
    && mv "$OUT/runs.tgz.tmp" "$OUT/runs.tgz"
  local models=()
  for name in $PACK_MODELS; do [[ -d $R/yeast_$name/model ]] && models+=("yeast_$name/model"); done
  if (( ${#models[@]} )); then
    rm -f "$OUT"/models.tar.part-*
    tar cf - -C "$R" "${models[@]}" | split -b 15M - "$OUT/models.tar.part-"
  fi
  return 0
}

if want yeast; then
  stamp prepare yeast
  dnalm prepare genome="$DATA/yeast_r64/GCA_000146045.2_R64_genomic.fna.gz" \
    annotation="$DATA/yeast_r64/GCA_000146045.2_R64_genomic.gff.gz" name=yeast_r64 out=$R/yeast_prepared \
    split.strategy=records 'split.val=[BK006947.3]' 'split.test=[BK006948.2,BK006949.2]' > $R/prepare.log 2>&1
  stamp tokenizer
  [[ -f $TOKENIZER/tokenizer.json ]] || dnalm tokenizer train data.prepared=$R/yeast_prepared vocab_size=4096 out=$TOKENIZER \
    > $R/tokenizer.log 2>&1
  stamp train: $RUNS
  for run in $RUNS; do
    IFS=: read -r name experiment overrides <<< "$run"
    dnalm train experiment=yeast/$experiment data.prepared=$R/yeast_prepared out=$R/yeast_$name \
      trainer.max_time=$TRAIN_TIME trainer.progress_bar=false \
      ${overrides//,/ } $EXTRA > $R/yeast_$name.log 2>&1 &
  done
  wait
  stamp trained
  pack
fi

if want gue; then
  stamp "GUE: $GUE_MODELS"
  for entry in $GUE_MODELS; do
    name=${entry%%=*}; rest=${entry#*=}
    IFS=: read -r ckpt model_extra <<< "$rest"
    for task in $GUE_TASKS; do
      for seed in $GUE_SEEDS; do
        dnalm finetune checkpoint=$ckpt task=$task data_root="$DATA" out=$R/gue_$name/${task}_seed$seed seed=$seed \
          trainer=gpu trainer.max_epochs=$GUE_EPOCHS trainer.max_time=$GUE_TIME trainer.progress_bar=false \
          save_model=false ${GUE_EXTRA:-} ${model_extra//,/ } $EXTRA > $R/gue_${name}_${task}_seed$seed.log 2>&1 &
      done
    done
  done
  wait
  stamp fine-tuned
  pack
fi

if want speed; then  # alone on the GPU: throughput of the selective-state-space families beside Hyena
  stamp speed
  dnalm speed "models=[${SPEED_MODELS:-hyena,mamba,caduceus}]" "modes=[${SPEED_MODES:-train,forward}]" \
    "lengths=[${SPEED_LENGTHS:-1k,4k,16k,64k,256k,1M}]" budget=${SPEED_BUDGET:-64k} out=$OUT/speed.md \
    > $OUT/speed.log 2>&1
fi

if want sh2; then
  stamp StripedHyena 2 speed
  python3 benchmarks/sh2_gpu.py --out $OUT/sh2_gpu.json ${SH2_ARGS:-} > $OUT/sh2_gpu.log 2>&1
fi
stamp done
date > "$R/finished"
