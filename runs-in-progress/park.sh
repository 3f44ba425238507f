#!/bin/bash
# Parks the runs of ~/lvae-runs in this repository (runs-in-progress/<sweep>/<run>/), so that they outlive the
# machine: a session's home folder is not promised to the next one, the repository is. Run near a session's
# end, then commit; pipeline.sh restores a parked run on a machine that lacks it. Each checkpoint is written
# whole (a rename), so a copy taken while the run trains is its last complete checkpoint.
set -euo pipefail
shopt -s nullglob
PARKED=$(cd "$(dirname "$0")" && pwd)
RUNS=$HOME/lvae-runs
for run in "$RUNS"/vae_vs_lvae-paper/*/ "$RUNS"/vae_vs_lvae-paper-seed1/*/ "$RUNS"/table1-paper-cpu/*/; do
  name=${run#"$RUNS"/}; name=${name%/}
  # A published fine-tuning is done (pipeline.sh skips it): its 26 MB checkpoint need not travel.
  published=$PARKED/../results/vae-vs-lvae-2000epochs/finetune=${name#table1-paper-cpu/finetune=}
  [[ $name == table1-paper-cpu/* && -e ${published%%,*},seed=0/metrics.json ]] && continue
  rm -rf "$PARKED/$name.new" && mkdir -p "$(dirname "$PARKED/$name")"
  cp -a "$run" "$PARKED/$name.new" && rm -f "$PARKED/$name.new/.lock"  # the lock belongs to a process here
  rm -rf "$PARKED/$name" && mv "$PARKED/$name.new" "$PARKED/$name"
  echo "parked $name: $(du -sh "$PARKED/$name" | cut -f1)"
done
