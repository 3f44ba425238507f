#!/bin/bash
# The paper-budget runs of issue 29, end to end, resumable: run it again after any stop.
#   setsid nohup bash runs-in-progress/pipeline.sh > ~/lvae-runs/pipeline.console 2>&1 &
# 1. Restores what this machine lacks: the frozen clone ~/lvae-longrun (the commit the runs started at, with its
#    own .venv) and each run folder parked in this repository (runs-in-progress/, by park.sh) that ~/lvae-runs lacks.
# 2. Keeps both cores busy with two lanes of runs at one thread each, each run resumed where it stopped:
#    the LVAE lane: the 5-layer LVAE+BN+WU at budget=paper, seed 0; its MC=10 fine-tuning (30 epochs); the
#    LVAE+BN+WU, seed 1; the VAE+BN, seed 0;
#    the VAE lane: the 5-layer VAE+BN+WU, seed 0; once the base LVAE is complete, its MC=10 x IW=10 fine-tuning
#    (3 epochs), beside the MC=10 one; the VAE+BN+WU, seed 1; the plain VAE, seed 0.
#    After each fine-tuning, the publication is staged in ~/lvae-runs/publish/ (the complete runs' records with
#    weights, the paired comparison, the paper folder).
set -uo pipefail
shopt -s nullglob
REPO=$(cd "$(dirname "$0")/.." && pwd)
PARKED=$REPO/runs-in-progress
FROZEN=2aa92b7  # the code every run here trains with (numerics version 2); never moved while they train
CLONE=$HOME/lvae-longrun
RUNS=$HOME/lvae-runs
BASE=$RUNS/vae_vs_lvae-paper
FINETUNE=$RUNS/table1-paper-cpu
SEED1=$RUNS/vae_vs_lvae-paper-seed1  # a sweep folder of its own, so that staging seed 0 never meets a run in progress
LVAE_BASE=$BASE/layers=5,seed=0,variant=lvae_bn_wu
VAE_BASE=$BASE/layers=5,seed=0,variant=vae_bn_wu
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 LVAE_DATA_ROOT=${LVAE_DATA_ROOT:-$(realpath "$REPO/../shared/data")}
mkdir -p "$RUNS"

complete() {  # complete <run folder>: exit status 0 when its record says trained and evaluated
  "$CLONE/.venv/bin/python" -c "import sys; from pathlib import Path; from lvae.run.record import is_complete, read_record
sys.exit(0 if is_complete(read_record(Path(sys.argv[1]))) else 1)" "$1"
}
train() {  # train <console name> <overrides...>: one run at $OMP_NUM_THREADS threads, to its end (a finished one returns at once)
  local name=$1; shift
  (cd "$CLONE" && .venv/bin/python train.py -m train.compile=true train.progress=false "$@" >> "$RUNS/$name.console" 2>&1)
}
stage() {  # the complete runs of seed 0 and their fine-tunings, published into $RUNS/publish/ as results/ will hold them
  local OUT=$RUNS/publish/vae-vs-lvae-2000epochs run finished=()
  for run in "$BASE"/*/ "$FINETUNE"/*/; do complete "$run" && finished+=("${run%/}"); done
  (cd "$CLONE" &&
    .venv/bin/python -m lvae.report "${finished[@]}" --publish "$OUT" --weights &&
    .venv/bin/python -m lvae.compare --a "$OUT/layers=5,seed=0,variant=vae_bn_wu" --b "$OUT/layers=5,seed=0,variant=lvae_bn_wu" > "$OUT/comparison.txt" &&
    .venv/bin/python -m lvae.paper --from "$OUT" --out "$OUT/paper") >> "$RUNS/publish.console" 2>&1 && echo "$(date -u +%FT%TZ) staged ${#finished[@]} runs in $OUT"
}
finetune() {  # finetune <mc10|mc10_iw10> <epochs> <lr_decay>: the base LVAE fine-tuned, then staged
  # Once published (results/ holds its record), a fine-tuning is done: its folder is not parked (park.sh).
  complete "$REPO/results/vae-vs-lvae-2000epochs/finetune=$1,seed=0" 2> /dev/null && return 0
  train "finetune-$1" experiment=table1 budget=paper seed=0 finetune=$1 train.epochs=$2 train.lr_decay=$3 \
    train.checkpoint_every=1 "init_from='$LVAE_BASE'" hydra.sweep.dir=$FINETUNE
  (flock 9 && stage) 9> "$RUNS/stage.lock"  # one staging at a time: the two lanes fine-tune side by side
}
# Fine-tuning lengths for this CPU (the paper gives none; configs/finetune_schedule/paper.yaml stays the GPU's):
# an MC=10 epoch costs about 10 plain ones and an MC=10 x IW=10 epoch about 100, so 30 and 3 epochs are each
# about 300 plain epochs, 70-90 minutes at one thread on this CPU (14-17 s a plain epoch); with the K=5000
# evaluations both fit one session beside each other, once the base LVAE is complete. From a quarter of the
# base rate (0.0005), decaying to a tenth (decay**epochs = 0.1); a checkpoint after every epoch, since an
# MC=10 x IW=10 epoch is ~25 minutes.
vae_lane() {
  train vae_bn_wu-seed0 experiment=vae_vs_lvae budget=paper seed=0 variant=vae_bn_wu hydra.sweep.dir=$BASE
  # The fine-tunings are what the MNIST table needs, so this core takes the MC=10 x IW=10 one as soon as the
  # base LVAE is complete (or its lane has given up), beside the LVAE lane's MC=10 one; seed 1 comes after.
  while ! complete "$LVAE_BASE" && kill -0 "$LVAE_LANE" 2> /dev/null; do sleep 60; done
  complete "$LVAE_BASE" && finetune mc10_iw10 3 0.464
  train vae_bn_wu-seed1 experiment=vae_vs_lvae budget=paper seed=1 variant=vae_bn_wu hydra.sweep.dir=$SEED1
  # Then the plain VAE at the paper's budget, for the active units and Figure 3's 5-layer column.
  train vae-seed0 experiment=vae_vs_lvae budget=paper seed=0 variant=vae hydra.sweep.dir=$BASE
}
lvae_lane() {
  # Both threads when the VAE lane has nothing to do but wait for this run (its VAE complete): a thread count
  # changes only how fast it runs, and the record names the threads of its last sitting.
  local threads=1
  complete "$VAE_BASE" && threads=2
  OMP_NUM_THREADS=$threads train lvae_bn_wu-seed0 experiment=vae_vs_lvae budget=paper seed=0 variant=lvae_bn_wu \
    hydra.sweep.dir=$BASE
  complete "$LVAE_BASE" || { echo "the base LVAE is not complete: see $RUNS/lvae_bn_wu-seed0.console"; return 1; }
  finetune mc10 30 0.926
  train lvae_bn_wu-seed1 experiment=vae_vs_lvae budget=paper seed=1 variant=lvae_bn_wu hydra.sweep.dir=$SEED1
  train vae_bn-seed0 experiment=vae_vs_lvae budget=paper seed=0 variant=vae_bn hydra.sweep.dir=$BASE
}
# The steps, in one function: bash reads all of it before it starts, so editing this file never changes a
# pipeline that is running.
main() {
  if [ ! -x "$CLONE/.venv/bin/python" ]; then
    rm -rf "$CLONE" && git clone -q "$REPO" "$CLONE" && git -C "$CLONE" checkout -q "$FROZEN" && make -C "$CLONE" install || return 1
  fi
  for parked in "$PARKED"/*/*/; do
    run=${parked#"$PARKED"/}; run=${run%/}
    [ -e "$RUNS/$run" ] || { mkdir -p "$(dirname "$RUNS/$run")" && cp -a "$parked" "$RUNS/$run" && echo "restored $run from $PARKED"; }
  done

  while pgrep -f "hydra.sweep.dir=$RUNS/" > /dev/null; do sleep 60; done  # an earlier start still running

  lvae_lane &
  LVAE_LANE=$!
  vae_lane &
  wait
}
main "$@"; exit $?
