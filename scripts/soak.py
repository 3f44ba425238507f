"""Soak test: a small sweep whose jobs are killed at random times and restarted until done.

    python scripts/soak.py [--kills 3] [--epochs 40] [--seed 0]

Every run is trained twice through the real command line (`train.py`): once
without interruption, and once killed (SIGKILL or SIGTERM, at a random moment)
and restarted with the same command until it completes. The two must end with
bitwise-identical parameters and metrics. Reads MNIST from $LVAE_DATA_ROOT (a
subset of it, so that it runs on a laptop CPU in a few minutes).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lvae.report import differences_between_runs  # noqa: E402

SWEEP = [("model=vae", "seed=0"), ("model=lvae", "seed=0"), ("model=vae", "seed=1"), ("model=lvae", "seed=1")]
SMALL = ("layers=3", "model.hidden_sizes=[64,32,16]", "model.latent_sizes=[16,8,4]", "data.train_subset=512",
         "train.batch_size=64", "eval.iw_samples=100", "eval.test_subset=64", "eval.train_subset=64",
         "train.checkpoint_every=2", "train.progress=false", "device=cpu")


def command(run_dir: Path, overrides: tuple[str, ...], epochs: int) -> list[str]:
    return [sys.executable, "train.py", *SMALL, *overrides, f"train.epochs={epochs}", f"warmup_epochs={epochs // 10}",
            f"hydra.run.dir={run_dir}"]


def start(cmd: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_with_kills(cmd: list[str], kills: int, rng: random.Random, max_delay: float) -> int:
    """Start, kill after a random delay, restart; `kills` times, then let it finish. Returns kills done."""
    done = 0
    while True:
        process = start(cmd)
        if done < kills:
            try:
                process.wait(timeout=rng.uniform(1.0, max_delay))  # torch's import takes a second or two
            except subprocess.TimeoutExpired:
                process.send_signal(rng.choice([signal.SIGKILL, signal.SIGTERM]))
                process.communicate()
                done += 1
                continue
        output, _ = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"run failed (exit {process.returncode}): {' '.join(cmd)}\n{output[-2000:]}")
        return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=3, help="kills per run before it may finish")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--max-delay", type=float, default=12.0, help="longest wait (s) before a kill")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="where runs go (default: a temporary folder)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    out = args.out or Path(tempfile.mkdtemp(prefix="lvae-soak-"))
    started, total_kills, failures = time.time(), 0, []
    for overrides in SWEEP:
        name = "_".join(o.replace("=", "-") for o in overrides)
        twin, killed = out / f"{name}_uninterrupted", out / f"{name}_killed"
        run_with_kills(command(twin, overrides, args.epochs), 0, rng, args.max_delay)
        kills = run_with_kills(command(killed, overrides, args.epochs), args.kills, rng, args.max_delay)
        total_kills += kills
        differences = differences_between_runs(twin, killed)
        verdict = "identical" if not differences else "DIFFERENT: " + ", ".join(differences)
        print(f"{name}: survived {kills} kills; {verdict}", flush=True)
        if differences:
            failures.append(name)
    print(f"\n{len(SWEEP)} runs, {total_kills} kills, {len(SWEEP) - len(failures)} identical to their "
          f"uninterrupted twin, {time.time() - started:.0f} s; runs in {out}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
