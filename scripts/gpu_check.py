"""The GPU self-check: `make gpu-check` on a CUDA machine (under 8 minutes, installs included), or
`python scripts/gpu_check.py --tiny` on any machine (small models, few steps: CI runs it on the CPU
so that every line of this script keeps working).

One summary, printed and written as markdown and JSON (default outputs/gpu-check/):
1. tests: the device-parametrised tests (the `device` fixture) on this device;
2. training: ms per step of the 5-layer LVAE and VAE at batch 256, eager and compiled;
3. evaluation: (image x sample)/s at K=5000 in full float32, eager and compiled; peak device memory;
4. a paper run: full epochs of the real training loop over 60,000 images at the paper's settings,
   projected to 2000 epochs plus the full test evaluation, and to Figure 3's 20 runs;
5. runs per device: 1, 2 and 4 training processes at once, each one's ms per step and the total.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import torch

from lvae.cli import timing
from lvae.core.compiling import CPU_MIN_TRAIN_STEPS, use_compile
from lvae.core.evaluate import tf32_matmuls
from lvae.run.config import DEVICES, resolve_device
from lvae.run.provenance import REPO_ROOT, describe_device, provenance

TIME_LIMIT_S = 8 * 60  # the whole check on a GPU, installs included (make gpu-check)
FIGURE3_RUNS, TRAIN_IMAGES = 20, 60_000
TINY = timing.Size(layers=2, overrides=("model.hidden_sizes=[32,16]", "model.latent_sizes=[8,4]"))


def run_tests(device: torch.device, tiny: bool, out: Path) -> dict:
    """pytest on the tests parametrised with this device (their ids end in [cpu] or [cuda])."""
    selection = ["-k", device.type]
    if tiny:  # CI already ran the whole suite: here one file proves the step works
        selection = ["tests/estimators/test_closed_form.py", *selection, "-m", "not slow"]
    report = out / "tests.xml"
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection,
                             f"--junitxml={report}"], cwd=REPO_ROOT, capture_output=True, text=True)
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    return {**counts, "passed": result.returncode == 0, "seconds": time.perf_counter() - started,
            "command": f"pytest {' '.join(selection)}", "tail": result.stdout.strip().splitlines()[-3:]}


def paper_run(device: torch.device, size: timing.Size, epochs: int, pairs_per_s: float) -> dict:
    """Full epochs of the real loop at the paper's settings (batch 256, warm-up on), timed after the first;
    projected to the paper's 2000 epochs plus the evaluation of the full test set."""
    steps_per_epoch = TRAIN_IMAGES // timing.BATCH
    compiled = use_compile(None, device, timing.PAPER_EPOCHS * steps_per_epoch, CPU_MIN_TRAIN_STEPS)  # as a paper run
    _, run = timing.training_setup("lvae", device, steps_per_epoch, compiled, size)
    first_epoch = timing.timed(lambda: run(steps_per_epoch), device)
    epoch_s = timing.timed(lambda: run(steps_per_epoch), device, repeats=epochs)
    # Evaluation: K=5000 (+1 for the ELBO) on 10,000 test images, the 10,000-image train bound, and
    # one forward pass over the training set for the batch-norm statistics (about a third of an epoch).
    evaluation_s = timing.TEST_SET * 5001 / pairs_per_s + 10_000 / pairs_per_s + epoch_s / 3
    run_s = timing.PAPER_EPOCHS * epoch_s + evaluation_s
    return {"model": f"LVAE+BN+WU, {size.layers} layers" + ("" if size == timing.PAPER else " (small)"),
            "compiled": compiled, "first_epoch_s": first_epoch, "epoch_s": epoch_s, "evaluation_s": evaluation_s,
            "run_hours": run_s / 3600, "figure3_hours_one_at_a_time": FIGURE3_RUNS * run_s / 3600}


def markdown(summary: dict) -> str:
    t, p = summary["tests"], summary["paper_run"]
    lines = [f"# GPU check: {summary['device']}", "",
             f"{summary['date']}, torch {summary['torch']}, commit {summary['git_commit']}"
             f"{' (--tiny: small models, not the paper sizes)' if summary['tiny'] else ''}; "
             f"{summary['seconds']:.0f} s in all.", "",
             f"- Tests (`{t['command']}`): {'passed' if t['passed'] else 'FAILED'}, {t['tests']} run, "
             f"{t['failures'] + t['errors']} failed, {t['skipped']} skipped ({t['seconds']:.0f} s)", "",
             "| | eager | compiled | speed-up | compile time (s) |", "|---|---|---|---|---|"]
    for what, unit, key in (("training", "ms/step", "ms_per_step"),
                            ("evaluation", "K=5000, (image x sample)/s", "pairs_per_s")):
        for name, r in summary[what].items():
            eager, fast = r["eager"][key], r["compiled"][key]
            speed_up = eager / fast if key == "ms_per_step" else fast / eager
            compile_s = r["compiled"]["first_call_s"] - r["eager"]["first_call_s"]
            lines.append(f"| {what} {name}, {unit} | {eager:.2f} | {fast:.2f} | x{speed_up:.2f} | {compile_s:.0f} |")
    peak = max(r[mode]["peak_bytes"] for r in summary["evaluation"].values() for mode in ("eager", "compiled"))
    lines += ["", f"- Peak memory of an evaluation: {peak / 2**20:.0f} MB",
              f"- A paper run ({p['model']}, {'compiled' if p['compiled'] else 'eager'}): {p['epoch_s']:.2f} s "
              f"per epoch (first epoch {p['first_epoch_s']:.1f} s), evaluation {p['evaluation_s'] / 60:.1f} min: "
              f"{p['run_hours']:.2f} h for 2000 epochs; Figure 3's 20 runs one at a time: at most "
              f"{p['figure3_hours_one_at_a_time']:.1f} h (every run counted as a 5-layer one)",
              "- Processes sharing the device: " + "; ".join(
                  f"{c['processes']}: {c['total_steps_per_s']:.0f} steps/s in all "
                  f"({', '.join(f'{m:.2f}' for m in c['ms_per_step_each'])} ms/step each)"
                  for c in summary["concurrency"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--tiny", action="store_true", help="small models and few steps (CI, on the CPU)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "gpu-check")
    args = parser.parse_args()
    device, size = resolve_device(args.device), (TINY if args.tiny else timing.PAPER)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    steps, eval_images = (5, 2) if args.tiny else (50, 64)
    print(f"GPU check on {describe_device(device)}{' (--tiny)' if args.tiny else ''}", flush=True)
    summary = {"device": describe_device(device), "tiny": args.tiny, "torch": torch.__version__,
               **{key: provenance(device)[key] for key in ("date", "git_commit")}}
    summary["tests"] = run_tests(device, args.tiny, args.out)
    print(f"tests: {'passed' if summary['tests']['passed'] else 'FAILED'} ({summary['tests']['seconds']:.0f} s)",
          flush=True)
    summary["training"] = {name: dict(zip(("eager", "compiled"), timing.bench_training(name, device, steps, size)))
                           for name in ("lvae", "vae")}
    print("training: timed", flush=True)
    with tf32_matmuls(allow_tf32=False):  # evaluation is a measurement, as in a run
        summary["evaluation"] = {name: dict(zip(("eager", "compiled"),
                                                timing.bench_evaluation(name, device, eval_images, 1024, size=size)))
                                 for name in ("lvae", "vae")}
    print("evaluation: timed", flush=True)
    pairs_per_s = max(summary["evaluation"]["lvae"][mode]["pairs_per_s"] for mode in ("eager", "compiled"))
    summary["paper_run"] = paper_run(device, size, 1 if args.tiny else 3, pairs_per_s)
    summary["concurrency"] = timing.concurrent_training(device, size, [1, 2] if args.tiny else [1, 2, 4], steps * 4)
    summary["seconds"] = time.perf_counter() - started
    summary["within_time_limit"] = summary["seconds"] <= TIME_LIMIT_S
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = markdown(summary)
    (args.out / "summary.md").write_text(text)
    print("\n" + text + f"\nwritten to {args.out}/summary.md and summary.json")
    if not summary["tests"]["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
