"""The paper's analyses in one folder (lvae/paper.py): every item from tiny runs, verdicts from the numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import lvae.cli.paper
from lvae.cli.paper import main as paper_main
from lvae.report.rule import DESCRIPTIVE, MEASURED, MISSING
from lvae.run.config import compose_config
from lvae.run.train import run

from ..helpers.datasets import write_synthetic_mnist

# Small enough that a run on the synthetic set takes about a second; two epochs, a curve point after each.
TINY = ["model.hidden_sizes=[32,16,8,8,8]", "model.latent_sizes=[4,2,2,2,2]", "train.batch_size=16",
        "train.epochs=2", "eval.iw_samples=8", "eval.test_subset=16", "eval.train_subset=32", "eval.analyze=false",
        "device=cpu", "train.progress=false", "eval.curve_every=1", "eval.curve_iw_samples=8", "eval.curve_images=16"]
VARIANTS = ("vae", "vae_bn", "vae_bn_wu", "lvae_bn_wu")
FIGURES = ("bounds_vs_epochs.png", "fig3/fig3.png", "kl_per_layer.png", "kl_per_unit.png", "analysis/pca.png")


@pytest.fixture(scope="module")
def tiny_paper(tmp_path_factory) -> Path:
    """Figure 3's four variants at 1 and 5 layers, and the two fine-tuned 5-layer LVAEs, as the presets name them."""
    root = tmp_path_factory.mktemp("paper")
    data = f"data.root={write_synthetic_mnist(root / 'data')}"
    for variant in VARIANTS:
        for layers in (1, 5):
            cfg = compose_config("experiment=fig3", "budget=quick", f"variant={variant}", f"layers={layers}", *TINY, data)
            run(cfg, root / "fig3-quick" / f"layers={layers},seed=0,variant={variant}")
    base = root / "fig3-quick" / "layers=5,seed=0,variant=lvae_bn_wu"
    for finetune in ("mc10", "mc10_iw10"):
        cfg = compose_config("experiment=table1", "budget=quick", f"finetune={finetune}", *TINY, data,
                             "train.epochs=1", f"init_from='{base}'")
        run(cfg, root / "table1-quick" / f"finetune={finetune},seed=0")
    return root


def test_every_item_is_written_under_its_claim_with_a_computed_verdict(tiny_paper, capsys):
    out = tiny_paper / "paper"
    with pytest.raises(SystemExit) as exit_code:
        paper_main(["--from", str(tiny_paper / "fig3-quick"), str(tiny_paper / "table1-quick"), "--out", str(out)])
    assert exit_code.value.code == 0 and f"wrote {out / 'index.md'}" in capsys.readouterr().out
    index = (out / "index.md").read_text()
    for figure in FIGURES:
        assert (out / figure).stat().st_size > 10_000, figure
        assert f"]({figure})" in index, f"index.md shows {figure}"
    sections = re.split(r"\n## ", index)[1:]
    assert [s.split(".")[0] for s in sections] == [str(i) for i in range(1, 8)], "the seven items, in order"
    for section in sections:
        assert "*The paper:*" in section
        verdict = re.search(r"\*\*Verdict: (.+?)(?: \(.*\))?\*\*", section).group(1)
        assert verdict in (*MEASURED, *MISSING, DESCRIPTIVE), section
    assert "| z1 (of 4) | z2 (of 2) |" in index, "the active-units table, per layer"
    assert "| epoch | VAE+BN+WU L=5 test bound | LVAE+BN+WU L=5 test bound |" in sections[0], "their difference"
    assert "| LVAE+BN+WU + fine-tuning (MC=10, IW=10) | -" in index, "the fine-tuned rows of the MNIST table"
    assert "OMNIGLOT" in index and "NORB" in index
    assert "**Not the paper's budget**" in index
    assert (out / "fig3" / "results.md").is_file() and (out / "analysis" / "analysis.json").is_file()


def test_the_command_runs_figure_3_then_the_table_like_make_reproduce(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(lvae.cli.paper, "run_child", lambda command: commands.append(command) or 0)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_code:  # nothing ran, so no run is there to analyse
        paper_main(["--budget", "quick", "train.epochs=1"])
    assert exit_code.value.code == 2
    assert [command[2:7] for command in commands] == [["lvae.reproduce", "--experiment", step, "--budget", "quick"]
                                                      for step in ("fig3", "table1")]
    assert all(command[-1] == "train.epochs=1" for command in commands)


def test_runs_without_per_image_estimates_are_compared_only_on_the_whole_test_set(tmp_path):
    from lvae.report.claims import difference
    from lvae.report.runs import RunRecord

    def record(name: str, mean: float, images: int) -> RunRecord:  # an older record: no per_image.pt beside it
        metric = {"mean": mean, "stderr": 0.3, "images": images, "test_set_images": 10_000}
        return RunRecord(tmp_path / name, "completed", {"seed": 0, "test_log_likelihood": metric}, None)

    whole = difference([record("a", -90.0, 10_000)], [record("b", -89.0, 10_000)], "test_log_likelihood")
    assert whole.value == pytest.approx(1.0) and whole.stderr == pytest.approx(0.3 * 2 ** 0.5)
    assert whole.degrees_of_freedom == 9_999, "one seed: the test images' degrees of freedom"
    assert difference([record("a", -90.0, 300)], [record("b", -89.0, 300)], "test_log_likelihood") is None, \
        "two samples of 300 images: not known to be the same images"
