"""Soak test: a small sweep whose jobs are killed at random times and relaunched, twice at once, until done.

    python scripts/soak.py [--kills 3] [--epochs 40] [--seed 0]

Every run is trained twice through the real command line (`train.py`): once
without interruption, and once killed (SIGKILL or SIGTERM, at a random moment)
and restarted with the same command until it completes. Half of the launches
start a second copy of the same command on the same directory beside the first
(a sweep relaunched while it still runs, a requeued job whose old copy is alive):
one of the two must run and the other stop at once, refused, without touching the
run. The two runs must end with bitwise-identical parameters and metrics. Reads
MNIST from $LVAE_DATA_ROOT (a subset of it, so that it runs on a laptop CPU in a
few minutes).
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
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # for tests.helpers, which is not installed with the package (lvae is)

from lvae.cli.train_command import EXIT_BUSY  # noqa: E402
from tests.helpers.reproducibility import differences_between_runs  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

SWEEP = [("model=vae", "seed=0"), ("model=lvae", "seed=0"), ("model=vae", "seed=1"), ("model=lvae", "seed=1")]
SMALL = ("layers=3", "model.hidden_sizes=[64,32,16]", "model.latent_sizes=[16,8,4]", "data.train_subset=512",
         "train.batch_size=64", "eval.iw_samples=100", "eval.test_subset=64", "eval.train_subset=64",
         "train.checkpoint_every=2", "train.progress=false", "device=cpu")


def command(run_dir: Path, overrides: tuple[str, ...], epochs: int) -> list[str]:
    return [sys.executable, "train.py", *SMALL, *overrides, f"train.epochs={epochs}", f"warmup_epochs={epochs // 10}",
            f"hydra.run.dir={run_dir}"]


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


KILLED = {-signal.SIGKILL, -signal.SIGTERM, 128 + signal.SIGTERM}  # -SIGTERM: before the handler was set


@dataclass
class Tally:
    kills: int = 0
    twins: int = 0  # launches with a concurrent copy of the same command
    refused: int = 0  # launches stopped at once because the other copy held the run


def finish(process: subprocess.Popen, tally: Tally) -> bool:
    """Wait for a launch; True when it completed the run. Besides that, only a kill or a refusal
    by the run's lock may end it."""
    output, _ = process.communicate()
    if process.returncode == EXIT_BUSY and "is in use by process" in output:
        tally.refused += 1
    elif process.returncode not in KILLED | {0}:
        raise SystemExit(f"run failed (exit {process.returncode}): {' '.join(process.args)}\n{output[-2000:]}")
    return process.returncode == 0


def run_with_kills(cmd: list[str], kills: int, rng: random.Random, max_delay: float) -> Tally:
    """Launch (half the time with a concurrent twin), kill after a random delay, relaunch; `kills`
    times, then let it finish."""
    tally = Tally()
    while True:
        launches = [start(cmd)]
        if rng.random() < 0.5:
            time.sleep(rng.uniform(0.0, 2.0))
            launches.append(start(cmd))
            tally.twins += 1
        if tally.kills < kills:
            time.sleep(rng.uniform(1.0, max_delay))  # torch's import takes a second or two
            how, running = rng.choice([signal.SIGKILL, signal.SIGTERM]), [p for p in launches if p.poll() is None]
            for process in running:
                process.send_signal(how)
            tally.kills += bool(running)
        if any([finish(process, tally) for process in launches]):  # a list: wait for every launch
            return tally


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
    started, tallies, failures = time.time(), [], []
    for overrides in SWEEP:
        name = "_".join(o.replace("=", "-") for o in overrides)
        twin, killed = out / f"{name}_uninterrupted", out / f"{name}_killed"
        finish(start(command(twin, overrides, args.epochs)), Tally())
        tallies.append(run_with_kills(command(killed, overrides, args.epochs), args.kills, rng, args.max_delay))
        differences = differences_between_runs(twin, killed)
        verdict = "identical" if not differences else "DIFFERENT: " + ", ".join(differences)
        print(f"{name}: survived {tallies[-1].kills} kills and {tallies[-1].twins} concurrent relaunches "
              f"({tallies[-1].refused} refused); {verdict}", flush=True)
        if differences:
            failures.append(name)
    total = {key: sum(getattr(t, key) for t in tallies) for key in ("kills", "twins", "refused")}
    print(f"\n{len(SWEEP)} runs, {total['kills']} kills, {total['twins']} concurrent relaunches ({total['refused']} "
          f"refused), {len(SWEEP) - len(failures)} identical to their uninterrupted twin, "
          f"{time.time() - started:.0f} s; runs in {out}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
