#!/bin/bash
# Publishes the complete paper-budget runs of ~/lvae-runs into results/ with this repository's code (after
# `make install`), from the repository root:
#   bash runs-in-progress/publish.sh
# Writes results/vae-vs-lvae-2000epochs/: each complete run's record with its weights.pt (lvae.report --publish
# --weights), comparison.md (lvae.compare, paired by seed, under each run's provenance), finetuning.md (each
# fine-tuning against its base), by_budget.md and lvae_minus_vae_by_budget.png (LVAE - VAE from 10 to 2000
# epochs, with the earlier published folders) and paper/ (lvae.paper --from).
# Runs in progress are left out; running it again publishes what has completed since.
set -euo pipefail
shopt -s nullglob
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
RUNS=${LVAE_RUNS:-$HOME/lvae-runs}
OUT=${PUBLISH_OUT:-results/vae-vs-lvae-2000epochs}
PY=.venv/bin/python
EARLIER=(results/paper-quick/runs results/first-n-images/cpu-50epochs results/vae-vs-lvae-200epochs)

complete=()
for run in "$RUNS"/vae_vs_lvae-paper/*/ "$RUNS"/vae_vs_lvae-paper-seed1/*/ "$RUNS"/table1-paper-cpu/*/; do
  "$PY" -c "import sys; from pathlib import Path; from lvae.run.record import is_complete, read_record
sys.exit(0 if is_complete(read_record(Path(sys.argv[1]))) else 1)" "$run" && complete+=("${run%/}")
done
[ ${#complete[@]} -gt 0 ] || { echo "no complete run below $RUNS"; exit 1; }
"$PY" -m lvae.report "${complete[@]}" --publish "$OUT" --weights > /dev/null
# The fine-tunings' folders named as the table1 preset names its own (finetune=mc10,seed=0): the names the
# command line gave them hold the base run's path, quoted (init_from='...'); their records keep the command.
for folder in "$OUT"/finetune=*; do
  name=$(basename "$folder") seed=$(sed -n 's/^seed: //p' "$folder/config.yaml")
  short="$OUT/${name%%,*},seed=$seed"
  [ "$folder" = "$short" ] || { rm -rf "$short" && mv "$folder" "$short"; }
done
"$PY" -m lvae.report "$OUT" > /dev/null
vae=("$OUT"/layers=5,seed=*,variant=vae_bn_wu) lvae=("$OUT"/layers=5,seed=*,variant=lvae_bn_wu)
if [ ${#vae[@]} -gt 0 ] && [ ${#lvae[@]} -gt 0 ]; then
  # comparison.md: the command and each run's provenance (from its record), then what the command prints.
  "$PY" - "${vae[@]}" "${lvae[@]}" > "$OUT/comparison.md" <<'HEADER'
import json, sys
from pathlib import Path
runs = [Path(folder) for folder in sys.argv[1:]]
records = {run: json.loads((run / "metrics.json").read_text()) for run in runs}
seeds = sorted({r["seed"] for r in records.values()})
first = next(iter(records.values()))
print(f"# LVAE+BN+WU minus VAE+BN+WU, 5 layers, {first['epochs']} epochs (the paper's budget), paired over all "
      f"{first['test_log_likelihood']['images']:,} test images, {len(seeds)} seed{'s' * (len(seeds) > 1)}\n")
print(f"`python -m lvae.compare --a {' '.join(str(r) for r in runs if r.name.endswith('=vae_bn_wu'))} "
      f"--b {' '.join(str(r) for r in runs if r.name.endswith('=lvae_bn_wu'))}`. The runs: "
      + "; ".join(f"{run.name}: `{r['command']}`, commit {r['git_commit'][:7]}, last sitting started {r['date']}, "
                  f"{r['wall_time_s']['train'] / 3600:.1f} h of training over its sittings + "
                  f"{r['wall_time_s']['evaluate'] / 60:.0f} min of evaluation on {r['device']}, "
                  f"K={r['test_log_likelihood']['iw_samples']}, numerics version {r['numerics_version']}"
                  for run, r in records.items())
      + ". The ± of a seed line is the standard error of the per-image differences.\n")
HEADER
  "$PY" -m lvae.compare --a "${vae[@]}" --b "${lvae[@]}" >> "$OUT/comparison.md"
  "$PY" -m lvae.compare --by-budget "${EARLIER[@]}" "$OUT" --layers 5 --figure "$OUT/lvae_minus_vae_by_budget.png" \
    > "$OUT/by_budget.md"
fi
# finetuning.md: each fine-tuning against the run it started from, paired image by image (and IW=10 against MC=10).
tuned=("$OUT"/finetune=mc10,seed=[0] "$OUT"/finetune=mc10_iw10,seed=[0])  # [0]: a pattern, so nullglob drops a missing one
if [ ${#tuned[@]} -gt 0 ]; then
  base="$OUT/layers=5,seed=0,variant=lvae_bn_wu"
  {
    echo "# The 2000-epoch LVAE+BN+WU fine-tuned, against itself before, paired over all 10,000 test images, seed 0"
    echo
    echo "Each table is \`python -m lvae.compare --a A --b B\` with A and B named above it. Each fine-tuning starts"
    echo "from the same 2000-epoch weights (not one after the other); their commands, lengths and learning rates are"
    echo "in their records (metrics.json, config.yaml) and in results/README.md."
    for b in "${tuned[@]}"; do
      echo; echo "## --a $base --b $b"; echo; "$PY" -m lvae.compare --a "$base" --b "$b"
    done
    if [ ${#tuned[@]} -eq 2 ]; then
      echo; echo "## --a ${tuned[0]} --b ${tuned[1]}"; echo; "$PY" -m lvae.compare --a "${tuned[0]}" --b "${tuned[1]}"
    fi
  } > "$OUT/finetuning.md"
fi
"$PY" -m lvae.paper --from "$OUT" --out "$OUT/paper"
echo "published ${#complete[@]} runs in $OUT"
