#!/bin/bash
# Publishes the complete paper-budget runs of ~/lvae-runs into results/ with this repository's code (after
# `make install`), from the repository root:
#   bash runs-in-progress/publish.sh
# Writes results/vae-vs-lvae-2000epochs/: each complete run's record with its weights.pt (lvae.report --publish
# --weights), comparison.md (lvae.compare, paired by seed, under each run's provenance), by_budget.md and lvae_minus_vae_by_budget.png
# (LVAE - VAE from 10 to 2000 epochs, with the earlier published folders) and paper/ (lvae.paper --from).
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
# Folder names as this code writes them (lvae/run/identity.py): without the quotes that the fine-tunings'
# init_from='...' put into the names the frozen code gave them; then the report written again under them.
for folder in "$OUT"/*\'*; do
  rm -rf "${folder//\'/}" && mv "$folder" "${folder//\'/}"
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
      + "; ".join(f"{run.name}: `{r['command']}`, commit {r['git_commit'][:7]}, finished {r['date']}, "
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
"$PY" -m lvae.paper --from "$OUT" --out "$OUT/paper"
echo "published ${#complete[@]} runs in $OUT"
