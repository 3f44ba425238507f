"""A completed run published with its weights (`python -m lvae.report RUNS --publish DIR --weights`) is read
back from the published folder alone as from the run's own: the same model, bit for bit, and the same numbers."""

from __future__ import annotations

import shutil

import pytest
import torch

import lvae
from lvae.cli.analyze import main as analyze_main
from lvae.cli.report import main as report_main
from lvae.run.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lvae.run.config import compose_config
from lvae.run.provenance import NUMERICS_VERSION
from lvae.run.record import CHECKPOINT_FILE, CONFIG_FILE, WEIGHTS_FILE, RecordError, read_record
from lvae.run.stored import RunDirError, check_run_dir, stored_run, trained_model
from lvae.run.train import run
from tests.helpers import REPO
from tests.helpers.tiny_run import tiny_run

TINY = tiny_run()


@pytest.fixture
def published(synthetic_mnist, tmp_path, monkeypatch):
    """(the run's folder, its published copy): a completed tiny run published with --weights. The published
    copy reads its data from this machine's root ($LVAE_DATA_ROOT), here the synthetic MNIST."""
    monkeypatch.setenv("LVAE_DATA_ROOT", str(synthetic_mnist))
    runs = tmp_path / "outputs"
    run(compose_config(f"data.root={synthetic_mnist}", *TINY), runs / "lvae")
    report_main([str(runs), "--publish", str(tmp_path / "results"), "--weights"])
    return runs / "lvae", tmp_path / "results" / "lvae"


def test_the_published_folder_holds_the_model_without_the_optimiser(published):
    run_dir, folder = published
    assert (folder / WEIGHTS_FILE).is_file() and not (folder / CHECKPOINT_FILE).exists()
    stored = torch.load(folder / WEIGHTS_FILE, weights_only=True)
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
    assert "optimizer" not in stored and "rng" not in stored and "training" not in stored
    assert stored["model"].keys() == checkpoint["model"].keys()
    record = read_record(run_dir)
    assert stored["git_commit"] == record["git_commit"] and stored["numerics_version"] == NUMERICS_VERSION
    assert stored["config"] == checkpoint["config"]
    assert (folder / WEIGHTS_FILE).stat().st_size < (run_dir / CHECKPOINT_FILE).stat().st_size / 2


def test_a_published_run_comes_back_as_the_run_itself(published):
    run_dir, folder = published
    original, copy = lvae.load_run(run_dir), lvae.load_run(folder)
    assert not copy.model.training and copy.metrics == original.metrics
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)["model"]  # the batch-norm statistics of the evaluation
    state = copy.model.state_dict()
    assert state.keys() == checkpoint.keys()
    assert all(state[key].dtype == value.dtype and torch.equal(state[key], value) for key, value in checkpoint.items())
    assert torch.equal(copy.data.test, original.data.test)

    images = original.data.test[:6]
    torch.manual_seed(0)
    from_run = lvae.iw_log_likelihood(original.model, images, k=10)
    torch.manual_seed(0)
    from_published = lvae.iw_log_likelihood(copy.model, images, k=10)
    assert torch.equal(from_published, from_run)


def test_a_published_run_is_analyzed(published, tmp_path, capsys):
    _, folder = published
    analyze_main([str(folder), "--out", str(tmp_path / "analysis"), "--device", "cpu", "--test-subset", "16"])
    assert "Active units per layer" in capsys.readouterr().out
    assert (tmp_path / "analysis" / "analysis.json").is_file()


def test_a_published_run_published_again_keeps_its_weights(published, tmp_path):
    _, folder = published
    report_main([str(folder.parent), "--publish", str(tmp_path / "again"), "--weights"])
    assert (tmp_path / "again" / "lvae" / WEIGHTS_FILE).read_bytes() == (folder / WEIGHTS_FILE).read_bytes()


def test_without_weights_nothing_but_the_record_is_published(synthetic_mnist, tmp_path):
    runs = tmp_path / "outputs"
    run(compose_config(f"data.root={synthetic_mnist}", *TINY), runs / "lvae")
    report_main([str(runs), "--publish", str(tmp_path / "results")])
    assert not (tmp_path / "results" / "lvae" / WEIGHTS_FILE).exists()


def test_a_folder_without_weights_names_both_files_that_would_do(tmp_path):
    (tmp_path / "config only").mkdir()
    (tmp_path / "config only" / CONFIG_FILE).write_text("seed: 0\n")
    with pytest.raises(RunDirError, match=f"has no {CHECKPOINT_FILE} or {WEIGHTS_FILE}: "):
        lvae.load_run(tmp_path / "config only")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match=f"has no {CONFIG_FILE} and no {CHECKPOINT_FILE} or {WEIGHTS_FILE}: "):
        check_run_dir(tmp_path / "empty")


def test_a_published_run_reads_its_data_where_this_machine_keeps_it(published, synthetic_mnist):
    _, folder = published
    config = folder / CONFIG_FILE
    config.write_text(config.read_text().replace(str(synthetic_mnist), "/the/machine/that/trained/it"))
    assert lvae.load_run(folder).config.data.root == str(synthetic_mnist)  # $LVAE_DATA_ROOT
    assert lvae.load_run(folder, data_root=synthetic_mnist).data.test.shape[1] == 784


def test_weights_without_publish_or_a_checkpoint_are_refused(synthetic_mnist, tmp_path, capsys):
    runs = tmp_path / "outputs"
    run(compose_config(f"data.root={synthetic_mnist}", *TINY), runs / "lvae")
    with pytest.raises(SystemExit):
        report_main([str(runs), "--weights"])
    assert "--weights needs --publish" in capsys.readouterr().err
    (runs / "lvae" / CHECKPOINT_FILE).unlink()
    with pytest.raises(SystemExit):
        report_main([str(runs), "--publish", str(tmp_path / "results"), "--weights"])
    refused = capsys.readouterr().err
    assert f"no {CHECKPOINT_FILE} or {WEIGHTS_FILE} to publish the weights of {runs / 'lvae'}" in refused
    assert not (tmp_path / "results" / "lvae").exists(), "nothing is published when a run's weights are missing"


def test_weights_are_published_only_for_completed_runs(synthetic_mnist, tmp_path, capsys):
    runs = tmp_path / "outputs"
    run(compose_config(f"data.root={synthetic_mnist}", *TINY), runs / "lvae")
    (runs / "unfinished").mkdir()
    (runs / "unfinished" / CONFIG_FILE).write_text((runs / "lvae" / CONFIG_FILE).read_text())
    report_main([str(runs), "--publish", str(tmp_path / "results"), "--weights"])
    assert (tmp_path / "results" / "lvae" / WEIGHTS_FILE).is_file()
    assert not (tmp_path / "results" / "unfinished" / WEIGHTS_FILE).exists()
    assert "no weights.pt for the runs that are not completed: unfinished" in capsys.readouterr().out


@pytest.mark.parametrize("edit, key", [("binarization_seed: 0", "data.binarization_seed"),
                                       ("min_variance: 1.0e-06", "model.min_variance"), ("layers: 2", "layers")])
def test_a_config_yaml_that_disagrees_with_the_weights_is_refused_naming_the_key(published, edit, key, capsys):
    """config.yaml is for people: an edited one would silently give other data or another model."""
    for folder in published:
        config = folder / CONFIG_FILE
        changed = {"binarization_seed: 0": "binarization_seed: 1", "min_variance: 1.0e-06": "min_variance: 0.001",
                   "layers: 2": "layers: 3"}[edit]
        assert edit in config.read_text()
        config.write_text(config.read_text().replace(edit, changed, 1))
        with pytest.raises(RecordError, match=f"disagrees with the config stored with the weights.*{key}"):
            lvae.load_run(folder)
        with pytest.raises(SystemExit):
            analyze_main([str(folder), "--device", "cpu"])
        assert key in capsys.readouterr().err


def test_weights_of_another_shape_are_refused_by_key_and_shape(published):
    run_dir, _ = published
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE)
    del checkpoint["config"]  # an old checkpoint: no config to check config.yaml against
    checkpoint["model"] = {key: value[:1] if value.dim() else value for key, value in checkpoint["model"].items()}
    save_checkpoint(run_dir / CHECKPOINT_FILE, **checkpoint)
    with pytest.raises(CheckpointError, match="do not fit the model that its config describes: it has other shapes"):
        lvae.load_run(run_dir)


def test_a_damaged_published_weights_file_gives_advice_for_a_published_folder(published):
    _, folder = published
    (folder / WEIGHTS_FILE).write_bytes((folder / WEIGHTS_FILE).read_bytes()[:-100])
    with pytest.raises(CheckpointError) as error:
        lvae.load_run(folder)
    assert "publish the run again" in str(error.value) and "afresh" not in str(error.value)


def test_a_stored_config_without_a_key_added_since_reads_back_with_that_keys_default(tmp_path):
    """Runs written before a key existed lack it in config.yaml: read back onto the schema, it has its default,
    which that run had (here model.init, deleted from the seed-0 VAE's published config.yaml)."""
    published = REPO / "results" / "vae-vs-lvae-200epochs" / "layers=5,seed=0,variant=vae_bn_wu"
    shutil.copytree(published, tmp_path / "run", ignore=shutil.ignore_patterns("per_image.pt"))
    config = tmp_path / "run" / "config.yaml"
    config.write_text("".join(line for line in config.read_text().splitlines(keepends=True)
                              if not line.startswith("  init:")))
    assert "init:" not in config.read_text().replace("init_from", "")
    cfg, weights = stored_run(tmp_path / "run", torch.device("cpu"))
    assert cfg.model.init == "pytorch" and cfg.model.name == "vae"
    trained_model(cfg, weights, 784, torch.device("cpu"))  # the weights fit the model it describes
