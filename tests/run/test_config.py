"""Every bad config value stops at once, naming the key and what is allowed."""

import os
import subprocess
import sys

import pytest
import torch
from hydra.errors import HydraException

from lvae.core.evaluate import CurveSettings, EvalSettings
from lvae.core.models import MODELS
from lvae.run.analysis import AnalysisSettings
from lvae.run.config import ConfigError, ModelName, compose_config, config_to_dict, validate
from lvae.run.settings import curve_settings, eval_settings

from ..helpers import REPO


def test_default_config_is_valid_and_matches_the_paper():
    cfg = compose_config()
    validate(cfg)
    assert cfg.model.name == "lvae" and cfg.layers == 5 and cfg.batch_norm and cfg.warmup_epochs == 200
    assert cfg.train.epochs == 2000 and cfg.train.batch_size == 256 and cfg.eval.iw_samples == 5000
    assert cfg.train.adam_eps == 1e-4 and cfg.train.grad_clip_norm == 4.0


@pytest.mark.parametrize(
    "override, key, allowed",
    [
        ("layers=0", "layers", "from 1 to 5"),
        ("layers=9", "layers", "from 1 to 5"),
        ("train.lr=-1", "train.lr", "> 0"),
        ("eval.iw_samples=0", "eval.iw_samples", "> 0"),
        ("eval.test_subset=1", "eval.test_subset", "> 1"),  # one image: no standard error, NaN in metrics.json
        ("warmup_epochs=-3", "warmup_epochs", ">= 0"),
        ("train.batch_size=0", "train.batch_size", "> 0"),
        ("model.latent_sizes=[64,32]", "model.latent_sizes", "at least 5"),
        ("data.name=cifar10", "data.name", "one of mnist, fashion_mnist, binarized_mnist, omniglot, norb"),
    ],
)
def test_out_of_range_values_name_key_and_allowed_values(override, key, allowed):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(override))
    assert key in str(error.value) and allowed in str(error.value)


@pytest.mark.parametrize(
    "override, allowed",
    [
        ("device=tpu", "[auto, cpu, cuda]"),
        ("likelihood=poisson", "[bernoulli, gaussian]"),
        ("model.name=ladder", "[vae, lvae]"),
        ("model.init=xavier", "[pytorch, glorot]"),
    ],
)
def test_closed_choices_are_refused_while_composing_with_the_allowed_values(override, allowed):
    with pytest.raises(HydraException) as error:
        compose_config(override)
    assert allowed in str(error.value.__cause__)


def test_the_schema_choices_are_the_registries():
    assert {name.value for name in ModelName} == set(MODELS)


def test_a_stored_config_holds_plain_strings_that_a_weights_only_load_reads(tmp_path):
    cfg = compose_config("model=vae", "likelihood=gaussian", "data.binarize=false")
    stored = config_to_dict(cfg)
    assert type(stored["model"]["name"]) is str and type(stored["likelihood"]) is str
    torch.save({"config": stored}, tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True)["config"]["model"]["name"] == "vae"
    assert f"{cfg.model.name}/{cfg.likelihood}" == "vae/gaussian"  # prints as the plain value


def test_unknown_model_lists_the_choices():
    with pytest.raises(HydraException) as error:
        compose_config("model=foo")
    message = str(error.value)
    assert "model" in message and "lvae" in message and "vae" in message


def test_wrong_types_and_unknown_keys_are_refused_by_the_schema():
    with pytest.raises(HydraException, match="layers=five"):
        compose_config("layers=five")
    with pytest.raises(HydraException, match="learning_rate"):
        compose_config("train.learning_rate=0.1")


@pytest.mark.slow  # starts a process
def test_command_line_exits_with_the_message():
    env = {**os.environ, "LVAE_DATA_ROOT": "/nonexistent"}
    result = subprocess.run([sys.executable, "train.py", "layers=0"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "layers=0 is not allowed: layers must be an integer from 1 to 5" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_a_run_folder_name_too_long_for_a_file_system_is_cut_with_a_hash_of_the_whole():
    from lvae.run.identity import MAX_RUN_DIR_NAME, run_dir_name

    overrides = ",".join(f"model.hidden_sizes=[{size},16,8,8,8]" for size in range(30))
    name = run_dir_name(overrides)
    assert len(name.encode()) <= MAX_RUN_DIR_NAME and name.startswith(overrides[:100])
    assert run_dir_name(overrides) == name, "the same overrides find the same folder again"
    assert run_dir_name(overrides.replace("[29,", "[99,")) != name, "overrides differing only at the end differ"
    assert run_dir_name("layers=5,seed=0") == "layers=5,seed=0" and run_dir_name("") == "defaults"
    assert run_dir_name("init_from=outputs/runs/a,seed=1") == "init_from=outputs_runs_a,seed=1", "one folder, no tree"
    assert run_dir_name("init_from='outputs/a/seed=0,layers=5',seed=1") == "init_from=outputs_a_seed=0,layers=5,seed=1"


def test_the_cores_defaults_are_the_run_configs():
    """EvalSettings and CurveSettings, which the core's callers may build without a run config, default to what
    the run config's defaults ask, the progress bar aside: the schema reads how evaluation runs from them, and
    K and the images from the paper's budget, which EvalSettings' defaults must agree with."""
    cfg = compose_config()
    assert eval_settings(cfg) == EvalSettings(progress=cfg.train.progress)
    assert curve_settings(cfg) == CurveSettings()
    assert AnalysisSettings().memory_budget_mb == cfg.eval.memory_budget_mb


def test_the_data_root_is_looked_up_when_a_config_is_composed(tmp_path, monkeypatch):
    """data.root defaults to $LVAE_DATA_ROOT as it is when the run is composed (not when lvae was imported), else
    ./data; a stored config holds the folder it resolved to."""
    monkeypatch.setenv("LVAE_DATA_ROOT", str(tmp_path))
    assert compose_config().data.root == str(tmp_path)
    monkeypatch.delenv("LVAE_DATA_ROOT")
    assert compose_config().data.root == "data" and config_to_dict(compose_config())["data"]["root"] == "data"
    assert compose_config("data.root=/elsewhere").data.root == "/elsewhere"
