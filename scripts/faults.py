"""The faults of issues 18 and 31, end to end through the real command lines: one line per fault.

    python scripts/faults.py [--out DIR]

Each line: the input, the exit code, the first line of lvae's message, and what was left: for a
run folder that existed before, "record intact" when the md5 of every file in it is the same
before and after (else the files that changed); for a refused launch, whether a folder was left.
Reads MNIST from $LVAE_DATA_ROOT (a small subset). A full disk is a real one, a tmpfs of the
size wanted mounted in a user namespace (`unshare -rm`); where that is not allowed, those lines
say so. Takes a few minutes on a laptop CPU, most of it the run stopped while torch.compile compiles.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lvae.run.folder import RunDirBusy, hold_run_dir

REPO = Path(__file__).resolve().parent.parent  # where train.py is

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SMALL = ("layers=2", "model.hidden_sizes=[32,16]", "model.latent_sizes=[4,2]", "train.batch_size=32",
         "data.train_subset=256", "eval.test_subset=2000", "eval.iw_samples=2", "eval.train_subset=32",
         "warmup_epochs=1", "train.epochs=1", "train.compile=false", "eval.compile=false", "eval.analyze=false",
         "device=cpu", "train.progress=false")
LOG_PREFIX = re.compile(r"^\[[^]]*\]\[[^]]*\]\[(ERROR|WARNING|INFO)\] - ")


def small(*overrides: str) -> list[str]:
    """SMALL with `overrides` in place of its values of the same keys (a sweep refuses a key given twice)."""
    keys = {override.split("=", 1)[0] for override in overrides}
    return [*(o for o in SMALL if o.split("=", 1)[0] not in keys), *overrides]


def train_command(*args: str) -> list[str]:
    """train.py with SMALL and `args`; flags (-m) first: Hydra reads no flag after an override."""
    flags = [arg for arg in args if arg.startswith("-")]
    return [sys.executable, str(REPO / "train.py"), *flags, *small(*(arg for arg in args if arg not in flags))]


def launch(command: list[str], env: dict | None = None, cwd: Path = REPO) -> tuple[int, str]:
    done = subprocess.run(command, cwd=cwd, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    return done.returncode, done.stdout


def first_message(output: str) -> str:
    """The first line that lvae (or a refusal before Hydra) wrote as an error or a stop."""
    lines = [line for line in output.splitlines() if line.strip()]
    for line in lines:
        match = LOG_PREFIX.match(line)
        if match and (match.group(1) == "ERROR" or "stopped by" in line):
            return line[match.end():]
    plain = [line for line in lines if not LOG_PREFIX.match(line)]
    return (plain or lines or ["(no output)"])[0]


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def compare(before: dict[str, str], folder: Path) -> str:
    after = digests(folder)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    return "record intact (md5 of every file)" if not changed else f"CHANGED: {', '.join(changed)}"


def left(folder: Path) -> str:
    return "no folder left" if not folder.exists() else f"FOLDER LEFT: {sorted(os.listdir(folder))}"


def status_of(folder: Path) -> str:
    path = folder / "metrics.json"
    if not path.exists():
        return "no metrics.json"
    metrics = json.loads(path.read_text())
    numbers = "no numbers" if "test_log_likelihood" not in metrics else "HAS NUMBERS"
    return f"status {metrics['status']}, epoch {metrics.get('epoch')}, step {metrics.get('step')}, {numbers}"


def on_a_small_disk(size: int, run_dir_name: str, out: Path, *overrides: str) -> tuple[int, str, str]:
    """train.py on a tmpfs of `size` bytes (a real full disk), the run folder copied out afterwards."""
    mount = out / "mnt"
    mount.mkdir(exist_ok=True)
    copy = out / f"{run_dir_name}_copied_out"
    script = (f"mount -t tmpfs -o size={size} tmpfs {mount} || exit 99; "
              f"{shlex.join(train_command(*overrides, f'hydra.run.dir={mount / run_dir_name}'))}; rc=$?; "
              f"cp -a {mount / run_dir_name} {copy} 2>/dev/null; exit $rc")
    code, output = launch(["unshare", "-rm", "sh", "-c", script])
    if code == 99:
        return code, "cannot mount a tmpfs here (unshare -rm not allowed): not tried", ""
    return code, output, status_of(copy) if copy.exists() else "nothing left to read"


def statuses(sweep: Path) -> str:
    """Each run folder of a sweep with its status."""
    found = [f"{folder.name}: {status_of(folder)}" for folder in sorted(sweep.iterdir())
             if folder.is_dir() and not folder.name.startswith(".")] if sweep.is_dir() else []
    return "; ".join(found) or "no run folder"


def module_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def issue_31_faults(out: Path, reference: Path, row) -> None:
    """10-14: a sweep with a failing job, compare across data, the paper command's faults, a full disk during the
    analysis figures."""
    # 10. A sweep in which one job diverges and one is refused at run time (a test subset larger than the test set).
    for launcher in (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], ["hydra/launcher=submitit_local"]):
        sweep = out / f"sweep_{launcher[0].split('=')[1]}"
        code, output = launch(train_command("-m", "train.lr=1e4,0.002", "eval.test_subset=100,20000",
                                            f"hydra.sweep.dir={sweep}",
                                            "hydra.sweep.subdir=${train.lr}_${eval.test_subset}", *launcher))
        lines = output.splitlines()  # Hydra names the failed job, then prints its cause on the next line
        named = next((i for i, line in enumerate(lines) if line.startswith("Error executing job")), None)
        row(f"10 -m train.lr=1e4,0.002 eval.test_subset=100,20000 {launcher[0]}", code, output, statuses(sweep),
            message=lines[named + 1] if named is not None and named + 1 < len(lines) else first_message(output))

    # 11. compare: runs that scored other data, a bad --images, a run against itself, a missing path.
    other_data = out / "binarization_seed_1"
    launch(train_command("data.binarization_seed=1", f"hydra.run.dir={other_data}"))
    for what, args in [("data.binarization_seed 0 against 1", ["--a", str(reference), "--b", str(other_data)]),
                       ("--images -5", ["--a", str(reference), "--b", str(other_data), "--images", "-5"]),
                       ("a run against itself", ["--a", str(reference), "--b", str(reference)]),
                       ("a path that does not exist", ["--a", str(reference), "--b", str(out / "nonexistent")])]:
        code, output = launch(module_command("lvae.compare", *args))
        row(f"11 compare: {what}", code, output, "-", message=output.strip().splitlines()[-1][:160])

    # 12. lvae.paper on records it cannot trust (a copy of the finished run, damaged), and bad arguments.
    damaged = out / "paper_runs" / "fig3-quick"
    for name, damage in [("truncated_metrics", lambda d: (d / "metrics.json").write_text("{\"status\": ")),
                         ("string_mean", lambda d: (d / "metrics.json").write_text(
                             (d / "metrics.json").read_text().replace('"mean": -', '"mean": "-', 1))),
                         ("corrupt_per_image", lambda d: (d / "per_image.pt").write_bytes(b"garbage"))]:
        shutil.copytree(reference, damaged / name, symlinks=True)
        damage(damaged / name)
    code, output = launch(module_command("lvae.paper", "--from", str(damaged), "--out", str(out / "paper")))
    left_out = [line for line in output.splitlines() if line.startswith("left out: ")]
    row("12 lvae.paper --from 3 damaged records", code, output,
        f"{len(left_out)} 'left out' lines; index.md {'written' if (out / 'paper' / 'index.md').is_file() else 'MISSING'}",
        message=(left_out or [first_message(output)])[0][:160])
    (out / "a_file").write_text("")
    for what, args in [("--out a file", ["--out", str(out / "a_file")]), ("--out under a file", ["--out", str(out / "a_file" / "paper")]),
                       ("--seeds 0", ["--seeds", "0"]), ("--budget nonexistent", ["--budget", "nonexistent"])]:
        code, output = launch(module_command("lvae.paper", "--no-run", *args))
        row(f"12 lvae.paper {what}", code, output, "-", message=output.strip().splitlines()[-1][:160])

    # 13. SIGTERM to lvae.paper while its first run trains: its children stop with it, a rerun is not refused.
    paper_dir = out / "paper_sigterm"
    paper_dir.mkdir()
    process = subprocess.Popen(module_command("lvae.paper", "--budget", "quick",
                                              *small("train.epochs=50", "train.checkpoint_every=1",
                                                     "data.train_subset=2048")),
                               cwd=paper_dir, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not list(paper_dir.glob("outputs/*/*/checkpoint.pt")) and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate()
    held = []
    for run_dir in (folder for folder in paper_dir.glob("outputs/*/*") if folder.is_dir()):
        try:
            with hold_run_dir(run_dir):
                pass
        except RunDirBusy:
            held.append(run_dir.name)
    row("13 SIGTERM to lvae.paper while it trains", process.returncode, output,
        f"run folders still held: {held or 'none (a rerun resumes at once)'}",
        message=next((line for line in output.splitlines()[::-1] if "stopped by" in line), first_message(output))[:160])

    # 14. A full disk during the analysis figures: room for the run's files, not for its figures.
    checkpoint_pages = -(-(reference / "checkpoint.pt").stat().st_size // 4096) * 4096
    code, output, result = on_a_small_disk(checkpoint_pages + 320 * 1024, "analysis_disk", out, "eval.analyze=true")
    row("14 full disk during the analysis figures (tmpfs)", code, output, result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="where runs go (default: a temporary folder)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="lvae-faults-"))
    rows: list[tuple[str, int, str, str]] = []

    def row(what: str, code: int, output: str, result: str, message: str | None = None) -> None:
        if "Traceback" in output or "--- Logging error ---" in output:
            result += "; A TRACEBACK WAS PRINTED"
        rows.append((what, code, message or first_message(output), result))
        print(f"{what} | exit {code} | {rows[-1][2][:160]} | {result}", file=sys.stderr, flush=True)

    reference = out / "finished"  # a finished run: the record that faults must not damage
    code, output = launch(train_command(f"hydra.run.dir={reference}"))
    assert code == 0, output

    # 1. A finished run without its checkpoint, launched again with another config.
    other = out / "copy_without_checkpoint"
    shutil.copytree(reference, other, symlinks=True)
    (other / "checkpoint.pt").unlink()
    before = digests(other)
    code, output = launch(train_command("layers=1", "train.lr=0.01", f"hydra.run.dir={other}"))
    row("1 copied run, checkpoint.pt removed, layers=1 train.lr=0.01", code, output, compare(before, other))

    # 2. Divergence.
    diverged = out / "diverged"
    code, output = launch(train_command("train.lr=1e4", "train.epochs=4", f"hydra.run.dir={diverged}"))
    row("2 train.lr=1e4 train.epochs=4", code, output, status_of(diverged))
    diverged = out / "diverged_finite"  # a learning rate at which the bound stays finite but absurd
    code, output = launch(train_command("train.lr=10", "train.epochs=4", f"hydra.run.dir={diverged}"))
    row("2 train.lr=10 train.epochs=4", code, output, status_of(diverged))

    # 3. A full disk: after the final checkpoint (room for it, not for per_image.pt), and of 16 kB at the start.
    checkpoint_pages = -(-(reference / "checkpoint.pt").stat().st_size // 4096) * 4096
    code, output, result = on_a_small_disk(checkpoint_pages + 64 * 1024, "after_checkpoint", out)
    row("3 full disk after the final checkpoint (tmpfs)", code, output, result)
    code, output, result = on_a_small_disk(16 * 1024, "small_disk", out)
    row("3 16 kB disk at the start (tmpfs)", code, output, result)

    # 4-6, 9. Refused on the command line, before anything runs.
    sweep_dir = out / "sweep"
    for what, overrides in [
        ("4 -m layers=1,9", ["-m", "layers=1,9", f"hydra.sweep.dir={sweep_dir}"]),
        ("5 train.batch_size=1", ["train.batch_size=1", f"hydra.run.dir={out / 'batch1'}"]),
        ("5 data.train_subset=1", ["data.train_subset=1", f"hydra.run.dir={out / 'subset1'}"]),
        ("6 lyers=5", ["lyers=5", f"hydra.run.dir={out / 'lyers'}"]),
        ("6 -m lyers=1,2", ["-m", "lyers=1,2", f"hydra.sweep.dir={out / 'lyers_sweep'}"]),
        ("9 experiment=fig3 without -m", ["experiment=fig3", f"hydra.run.dir={out / 'fig3'}"]),
        ("7 layers=0", ["layers=0", f"hydra.run.dir={out / 'layers0'}"]),
        ("7 device=cuda", ["device=cuda", f"hydra.run.dir={out / 'cuda'}"]),
    ]:
        code, output = launch(train_command(*overrides))
        folder = Path(overrides[-1].split("=", 1)[1])
        row(what, code, output, left(folder))

    # 7. Refused launches: another process holds the run; another config for a finished run; missing data.
    held = out / "held"
    shutil.copytree(reference, held, symlinks=True)
    with hold_run_dir(held) as hold:
        hold.accepted = True  # this script stands for the process running there
        before = digests(held)
        code, output = launch(train_command(f"hydra.run.dir={held}"))
        row("7 second launch while another process holds the run", code, output, compare(before, held))
    before = digests(reference)
    code, output = launch(train_command("train.lr=0.01", f"hydra.run.dir={reference}"))
    row("7 finished run, train.lr=0.01", code, output, compare(before, reference))
    code, output = launch(train_command("data.root=/nonexistent/data", "data.download=false",
                                        f"hydra.run.dir={out / 'no_data'}"))
    row("7 missing data (data.download=false)", code, output, left(out / "no_data"))

    # 8. Fine-tuning from a run of another architecture.
    before = digests(reference)
    code, output = launch(train_command("layers=1", "model.hidden_sizes=[32]", "model.latent_sizes=[4]",
                                        f"init_from={reference}", f"hydra.run.dir={out / 'finetune'}"))
    row("8 init_from a 2-layer run with layers=1", code, output, f"{left(out / 'finetune')}; init_from run: "
        f"{compare(before, reference)}")

    # 9. SIGTERM during training: the message counts as metrics.json does.
    stopped = out / "sigterm"
    process = subprocess.Popen(train_command("train.epochs=50", "train.checkpoint_every=1", "data.train_subset=2048",
                                             f"hydra.run.dir={stopped}"),
                               cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not (stopped / "checkpoint.pt").exists() and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate()
    row("9 SIGTERM during training", process.returncode, output, status_of(stopped))

    # 9. SIGTERM while torch.compile compiles the first step.
    compiling = out / "sigterm_compiling"
    process = subprocess.Popen(train_command("train.compile=true", f"hydra.run.dir={compiling}"),
                               cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not (compiling / "config.yaml").exists() and process.poll() is None:  # accepted: training starts
        time.sleep(0.05)
    time.sleep(1.0)
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate()
    said = "acknowledged at once" if "SIGTERM received" in output else "NOT ACKNOWLEDGED"
    row("9 SIGTERM while torch.compile compiles", process.returncode, output,
        f"{said}, stopped {time.time() - sent:.0f} s after the signal; {status_of(compiling)}")

    # 9. A report over a folder that links a run in.
    linked = out / "results"
    linked.mkdir()
    (linked / "run").symlink_to(reference, target_is_directory=True)
    code, output = launch([sys.executable, "-m", "lvae.report", str(linked)])
    table_rows = [line for line in output.splitlines() if line.startswith("|")][2:]  # below the header
    row("9 lvae.report on a folder holding a symlinked run", code, output, "-",
        message=f"{len(table_rows)} run(s) in the table")

    # 9. A relative LVAE_DATA_ROOT: the message names the absolute folder.
    code, output = launch(train_command("data.download=false", f"hydra.run.dir={out / 'relative_root'}"),
                          env={**ENV, "LVAE_DATA_ROOT": "relative/data"}, cwd=out)
    row("9 LVAE_DATA_ROOT=relative/data (cwd: the out folder)", code, output, left(out / "relative_root"))

    issue_31_faults(out, reference, row)

    print()
    print("| fault (input) | exit | first line of the message | what was left |")
    print("|---|---|---|---|")
    for what, code, message, result in rows:
        print(f"| {what} | {code} | {message} | {result} |")
    print(f"\nruns in {out}")


if __name__ == "__main__":
    main()
