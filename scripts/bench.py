"""Benchmark training and K=5000 evaluation, eager and compiled, against the device's own matmul rate.

    python scripts/bench.py [--device auto] [--eval-images 64] [--naive-images 8] [--profile]
                            [--chunk-budgets MB [MB ...]] [--processes N [N ...]]

Prints, for a 5-layer LVAE and VAE with batch norm, eager and compiled side by side:
- training: ms per step at batch 256 (the real training loop), and the model's FLOP rate
  as a fraction of the dense matmul rate measured on the same layer shapes; the compile
  time separately, and a check that nothing recompiles after warm-up;
- evaluation: (images x importance samples)/s at K = 5000 and its fraction of the
  matmul rate, peak memory against the budget, and the projected time of the full
  10,000-image test set;
- a summary per model: the projected minutes per 100 MNIST epochs and hours of the paper's budget
  (its epochs, then the full test set at K = 5000), with the step, evaluation and matmul figures, and
  the floor: what a step and the full test set would take if their matmuls ran at the measured
  matmul rate with nothing else to do;
- with --chunk-budgets: the compiled evaluation's speed at other chunk sizes (eval.memory_budget_mb);
- runs sharing the machine: 1 and 2 (--processes) training processes at once, each with its share of
  the cores as threads: whether a sweep gains from running its jobs side by side;
- (eager) the time for K = 100, 1000, 5000 and for 1 to 5 layers;
- a naive evaluator (one image at a time, every sample through the whole model in
  mini-batches of 100, as common implementations do): its speed, our speed-up and
  the two estimates side by side;
- with --profile: torch.profiler's top operators of 20 training steps, eager and compiled, and of a
  compiled evaluation, and (on the CPU) where their time goes: matmuls, optimiser, gradient clipping,
  random draws, element-wise work, the rest.

Evaluation is measured as `lvae.core.evaluate.evaluate_model` runs it: batch norm folded
into the dense layers (`fold_batchnorm`); the naive evaluator keeps it unfolded, as
common implementations do.

How FLOPs are counted, and every timing function: lvae/cli/timing.py.
"""

from __future__ import annotations

import argparse
import os

import torch

from lvae.cli.reproduce import MNIST_TRAIN_IMAGES
from lvae.cli.timing import (BATCH, PAPER, STEPS_PER_EPOCH, TEST_SET, bench_evaluation, bench_naive, bench_training,
                             best_matmul_rate, concurrent_training, evaluation_model, profile_evaluation,
                             profile_training, random_binary_images, timed)
from lvae.core.evaluate import chunk_layout, iw_log_likelihood
from lvae.run.config import DEVICES, compose_config, resolve_device
from lvae.run.provenance import describe_device


def print_summary(training: dict, evaluation: dict) -> None:
    """Per model: what a step and an evaluation cost, and what that makes of MNIST runs."""
    paper = compose_config()  # the schema's defaults: the paper's budget
    print(f"\nSummary, 5 layers, batch norm; MNIST ({MNIST_TRAIN_IMAGES:,} training images, batch {BATCH}: "
          f"{STEPS_PER_EPOCH} steps per epoch; {TEST_SET:,} test images x K={paper.eval.iw_samples}), eager | compiled:")
    for model_name in training:
        steps, evals = training[model_name], evaluation[model_name]
        train_rate, eval_rate = best_matmul_rate(*steps), best_matmul_rate(*evals)
        per_100 = [100 * STEPS_PER_EPOCH * s["ms_per_step"] / 1000 / 60 for s in steps]
        # The paper's budget runs as `auto` runs it at that size: training and evaluation compiled.
        paper_hours = (paper.train.epochs * per_100[1] / 100 + evals[1]["full_test_minutes"]) / 60
        print(f"  {model_name.upper():4s}  training   {steps[0]['ms_per_step']:6.1f} | {steps[1]['ms_per_step']:6.1f} ms/step "
              f"({steps[0]['model_flops'] / train_rate:.0%} | {steps[1]['model_flops'] / train_rate:.0%} of matmul)  "
              f"100 epochs {per_100[0]:.0f} | {per_100[1]:.0f} min  paper budget {paper_hours:.1f} h "
              f"(compiled: {paper.train.epochs} epochs, then the full test set)")
        print(f"        evaluation {evals[0]['pairs_per_s']:6,.0f} | {evals[1]['pairs_per_s']:6,.0f} pairs/s "
              f"({evals[0]['model_flops'] / eval_rate:.0%} | {evals[1]['model_flops'] / eval_rate:.0%} of matmul)  "
              f"full test set {evals[0]['full_test_minutes']:.1f} | {evals[1]['full_test_minutes']:.1f} min")
        # The floor: the same matmuls at the matmul rate measured on their shapes, with nothing else to do.
        step_floor_ms = steps[1]["ms_per_step"] * steps[1]["model_flops"] / train_rate
        test_floor_min = evals[1]["full_test_minutes"] * evals[1]["model_flops"] / eval_rate
        print(f"        floor (the matmuls alone, at {train_rate / 1e9:.0f} | {eval_rate / 1e9:.0f} GFLOP/s): "
              f"{step_floor_ms:.1f} ms/step, 100 epochs {100 * STEPS_PER_EPOCH * step_floor_ms / 1000 / 60:.0f} min, "
              f"full test set {test_floor_min:.1f} min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--eval-images", type=int, default=64)
    parser.add_argument("--naive-images", type=int, default=8)
    parser.add_argument("--memory-budget-mb", type=int, default=1024)
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top operators")
    parser.add_argument("--chunk-budgets", type=int, nargs="*", default=[], metavar="MB",
                        help="also time the compiled evaluation at these eval.memory_budget_mb values (chunk sizes)")
    parser.add_argument("--processes", type=int, nargs="*", default=[1, 2], metavar="N",
                        help="time N training processes at once, each with cores/N threads (default: 1 2; none: skip)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"lvae benchmark on {describe_device(device)}, torch {torch.__version__}\n")

    training, evaluation = {}, {}
    print("Training, 5 layers, batch norm, batch 256 (the real training loop), eager | compiled:")
    for model_name in ("lvae", "vae"):
        eager, fast = training[model_name] = bench_training(model_name, device, args.train_steps)
        rate = best_matmul_rate(eager, fast)
        print(f"  {model_name.upper():4s} {eager['ms_per_step']:6.2f} | {fast['ms_per_step']:6.2f} ms/step "
              f"(x{eager['ms_per_step'] / fast['ms_per_step']:.2f})  "
              f"{eager['model_flops'] / rate:.0%} | {fast['model_flops'] / rate:.0%} "
              f"of matmul on the same shapes ({rate / 1e9:.1f} GFLOP/s)  "
              f"compile {fast['first_call_s'] - eager['first_call_s']:.0f} s")
    print("  (no recompilation after warm-up: the timed steps ran under "
          "torch.compiler.set_stance('fail_on_recompile'))")

    print(f"\nEvaluation, K=5000, {args.eval_images} images, memory budget {args.memory_budget_mb} MB, "
          "eager | compiled:")
    for model_name in ("lvae", "vae"):
        eager, fast = evaluation[model_name] = bench_evaluation(model_name, device, args.eval_images,
                                                                args.memory_budget_mb)
        rate = best_matmul_rate(eager, fast)
        print(f"  {model_name.upper():4s} {eager['pairs_per_s']:7.0f} | {fast['pairs_per_s']:7.0f} (image x sample)/s "
              f"(x{fast['pairs_per_s'] / eager['pairs_per_s']:.2f})  "
              f"{eager['model_flops'] / rate:.0%} | {fast['model_flops'] / rate:.0%} "
              f"of matmul ({rate / 1e9:.1f} GFLOP/s)  peak memory "
              f"{eager['peak_bytes'] / 2**20:.0f} | {fast['peak_bytes'] / 2**20:.0f} MB  full test set: "
              f"{eager['full_test_minutes']:.1f} | {fast['full_test_minutes']:.1f} min (projected)  "
              f"compile {fast['first_call_s'] - eager['first_call_s']:.0f} s")

    print_summary(training, evaluation)

    if args.profile:
        for compiled in (False, True):
            print(f"\nProfile of 20 training steps, LVAE, {'compiled' if compiled else 'eager'}:")
            print(profile_training("lvae", device, compiled))
        print("\nProfile of the K=5000 evaluation of 16 images, LVAE, compiled:")
        print(profile_evaluation("lvae", device, compiled=True))

    if args.chunk_budgets:
        print(f"\nEvaluation against the chunk size, compiled, K=5000, {args.eval_images} images "
              "(eval.memory_budget_mb; no budget changes a number):")
        for model_name in ("lvae", "vae"):
            for budget in args.chunk_budgets:
                r, = bench_evaluation(model_name, device, args.eval_images, budget, modes=(True,))
                images, samples = chunk_layout(evaluation_model(model_name, 5, device), args.eval_images, 5000, budget)
                print(f"  {model_name.upper():4s} {budget:5d} MB: chunks of {images} x {samples} "
                      f"= {images * samples:6,d} pairs  {r['pairs_per_s']:7,.0f} pairs/s  "
                      f"{r['model_flops'] / r['matmul_flops']:.0%} of matmul  full test set "
                      f"{r['full_test_minutes']:.1f} min")

    if args.processes:
        print(f"\nRuns sharing the machine: N processes training the compiled 5-layer LVAE at once, each with "
              f"{os.cpu_count()} cores / N threads (a sweep's jobs run this way with hydra/launcher=joblib):")
        for r in concurrent_training(device, PAPER, args.processes, args.train_steps):
            print(f"  {r['processes']} at once: {r['total_steps_per_s']:5.1f} steps/s in all "
                  f"({', '.join(f'{m:.1f}' for m in r['ms_per_step_each'])} ms/step each)")

    print("\nEvaluation time against K (LVAE, 5 layers, per image):")
    model = evaluation_model("lvae", 5, device)
    images = random_binary_images(16, device)
    for k in (100, 1000, 5000):
        seconds = timed(lambda: iw_log_likelihood(model, images, k, args.memory_budget_mb), device)
        print(f"  K={k:5d}  {1000 * seconds / len(images):8.2f} ms/image")
    print("\nEvaluation time against layers (LVAE, K=5000, per image):")
    for layers in range(1, 6):
        model = evaluation_model("lvae", layers, device)
        seconds = timed(lambda: iw_log_likelihood(model, images, 5000, args.memory_budget_mb), device)
        print(f"  L={layers}  {1000 * seconds / len(images):8.2f} ms/image")

    r = bench_naive(device, args.naive_images, args.memory_budget_mb)
    print(f"\nNaive evaluator (one image at a time, samples in batches of 100), LVAE L5, K=5000, "
          f"{args.naive_images} images:")
    print(f"  naive {r['naive_seconds']:.2f} s, ours {r['our_seconds']:.2f} s: speed-up x{r['speedup']:.1f}")
    print(f"  estimates (mean log p(x)): naive {r['naive']:.3f}, ours {r['ours']:.3f}, difference "
          f"{abs(r['naive'] - r['ours']):.3f} (Monte Carlo standard error per image about {r['stderr']:.3f})")


if __name__ == "__main__":
    main()
