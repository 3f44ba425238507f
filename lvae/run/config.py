"""Typed configuration schema (Hydra ConfigStore), its conversion and value checks.

The dataclasses give types and defaults: Hydra refuses an unknown key or a value
of the wrong type while composing. `to_config` turns a composed (or stored) tree
into these dataclasses once, at the edge: the run, data loading and reports take
the typed `Config`, and only this module, the commands and the sweep logic know
OmegaConf. `validate` adds the ranges a type cannot express and names the key and
the allowed values in its message.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lvae.core.evaluate import CurveSettings, EvalSettings
from lvae.core.models import ModelSpec
from lvae.data import DATASETS as DATASET_REGISTRY
from lvae.data.files import default_data_root
from lvae.data.images import BINARY, GREY_LEVELS
from lvae.data.settings import INTENSITY_SCALES, DataConfig
from lvae.run.identity import CURVE_KEYS, HOW_IT_RUNS, flatten, run_defining_values, run_dir_name, run_folder_ignores


def _config_dir() -> Path:
    """The copy of configs/ inside the installed package (a wheel ships it as lvae/configs, see
    pyproject.toml), else configs/ at the top of this checkout (an editable install, or no install)."""
    package = Path(__file__).resolve().parent.parent  # lvae/
    shipped = package / "configs"
    return shipped if shipped.is_dir() else package.parent / "configs"


CONFIG_DIR = str(_config_dir())
# The paper's budget (epochs, warm-up, how much is evaluated) is written in one place, configs/budget/paper.yaml:
# the schema's defaults below read it, so a run without a budget preset has the paper's budget.
PAPER_BUDGET: dict = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "budget" / "paper.yaml"))

MAX_LAYERS = 5


class Choice(str, Enum):
    """A closed choice of the schema: composing refuses any other value and lists the allowed ones
    (`likelihood=poisson` -> "expected one of [bernoulli, gaussian]"). A member is its plain string:
    it compares, hashes, prints and formats as one ("vae" == ModelName.vae, f"{name}" == "vae")."""

    def __str__(self) -> str:
        return self.value


def _choice(name: str, values: Any) -> type[Choice]:
    return Choice(name, {value: value for value in values}, module=__name__)  # type: ignore[return-value]


ModelName = _choice("ModelName", ("vae", "lvae"))  # lvae/core/models.py's MODELS maps each to its class
Likelihood = _choice("Likelihood", ("bernoulli", "gaussian"))
Device = _choice("Device", ("auto", "cpu", "cuda"))
Init = _choice("Init", ("pytorch", "glorot"))  # torch.nn defaults | Glorot-normal, zero biases, as Lasagne
DEVICES = tuple(d.value for d in Device)
BINARY_DATASETS = tuple(name for name, d in DATASET_REGISTRY.items() if d.pixels == BINARY)  # stored as 0/1
GREY_LEVEL_DATASETS = tuple(name for name, d in DATASET_REGISTRY.items() if d.pixels == GREY_LEVELS)  # 8-bit


PAPER_MODEL = ModelSpec()  # the schema's model defaults: the paper's (lvae/core/models.py)
# How evaluation runs, and the training curves' points, default to the core's settings (lvae/core/evaluate.py); what
# is evaluated (K, test and training images) to the paper's budget.
EVALUATION, CURVE = EvalSettings(), CurveSettings()


@dataclass
class ModelConfig:
    name: ModelName = ModelName(PAPER_MODEL.name)  # configs/model/ sets it: vae or lvae
    # Bottom (z_1) to top (z_5); a model with L layers uses the first L (docs/method.md, section 4).
    hidden_sizes: list[int] = field(default_factory=lambda: list(PAPER_MODEL.hidden_sizes))
    latent_sizes: list[int] = field(default_factory=lambda: list(PAPER_MODEL.latent_sizes))
    mlp_depth: int = PAPER_MODEL.mlp_depth
    min_variance: float = PAPER_MODEL.min_variance
    head_batch_norm: bool = PAPER_MODEL.head_batch_norm
    vae_mirror_encoder_widths: bool = PAPER_MODEL.vae_mirror_encoder_widths
    init: Init = Init(PAPER_MODEL.init)


def _data_defaults() -> DataConfig:
    """data.* as the schema has it (lvae/data/settings.py types it): the data root is looked up when a config is
    composed ($LVAE_DATA_ROOT, else ./data, unless data.root is given), the training images are the paper budget's."""
    return DataConfig(root="${default_data_root:}", train_subset=PAPER_BUDGET["data"]["train_subset"])


@dataclass
class TrainConfig:
    epochs: int = PAPER_BUDGET["train"]["epochs"]
    batch_size: int = 256
    lr: float = 0.002
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-4
    grad_clip_norm: float = 4.0
    grad_clip_value: Optional[float] = None  # then each gradient entry to [-v, v] (the authors' code: 0.9)
    lr_decay: float = 1.0  # the learning rate of epoch e (from 0) is lr * lr_decay**e; 1 = constant
    iw_samples: int = 1  # K of the importance-weighted bound (1 = ELBO)
    mc_samples: int = 1  # Monte Carlo samples averaged per image
    checkpoint_every: int = 10  # epochs between checkpoints (one is always written at the end)
    compile: Optional[bool] = None  # torch.compile the step; null = auto: on CUDA, and on CPU for long runs
    progress: bool = True


@dataclass
class EvalConfig:
    iw_samples: int = PAPER_BUDGET["eval"]["iw_samples"]
    # N test images, the first N of one fixed random order (lvae/data/, fixed_permutation); None = all of them
    test_subset: Optional[int] = PAPER_BUDGET["eval"]["test_subset"]
    train_subset: int = PAPER_BUDGET["eval"]["train_subset"]  # training images for the training-set bound
    memory_budget_mb: int = EVALUATION.memory_budget_mb  # activations of one evaluation chunk
    analyze: bool = True  # active units, PCA, samples and figures at the end of a run
    allow_tf32: bool = EVALUATION.allow_tf32  # evaluation is a measurement: full float32 matmuls on CUDA unless asked
    # torch.compile the evaluation; null = auto: on CUDA, and on CPU for large ones
    compile: Optional[bool] = EVALUATION.compile
    # Training curves (lvae/core/evaluate.py, curve_point): every curve_every epochs, the test bound with K=curve_iw_samples,
    # the test and training ELBO on curve_images images each, and every unit's KL term; null = about 20 points for
    # runs of 10 epochs or more (lvae/core/evaluate.py, curve_interval), 0 = none.
    curve_every: Optional[int] = None
    curve_iw_samples: int = CURVE.iw_samples
    curve_images: int = CURVE.images


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=_data_defaults)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    layers: int = len(PAPER_MODEL.latent_sizes)
    batch_norm: bool = PAPER_MODEL.batch_norm
    warmup_epochs: int = PAPER_BUDGET["warmup_epochs"]  # KL weight rises linearly 0 -> 1 over these epochs; 0 = off
    likelihood: Likelihood = Likelihood(PAPER_MODEL.likelihood)
    seed: int = 0
    device: Device = Device.auto
    allow_tf32: bool = True  # TF32 matmuls on CUDA (the log-likelihood reduction stays in float64)
    resume: Optional[str] = None  # a run directory to continue (default: the run's own directory)
    init_from: Optional[str] = None  # a completed (or published) run directory whose final weights start training
    budget_name: Optional[str] = None  # the budget preset (configs/budget/) that set epochs and evaluation, if any


def to_config(tree: DictConfig | dict) -> Config:
    """A composed config (Hydra's tree) or a stored one (a config.yaml, a checkpoint's) as the typed Config that
    runs and reports take: merged onto the schema, interpolations resolved. A key that a stored config lacks because
    it was added to the schema later has its default, which that run had: the one place that fills in what older
    runs lack. A key that the schema does not have raises ConfigError naming it (and the closest one it has)."""
    _refuse_unknown_keys(tree)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), tree))  # type: ignore[return-value]


def config_to_dict(cfg: Config | DictConfig | dict) -> dict:
    """The config as plain Python values, interpolations resolved and choices as strings: what a
    checkpoint (read back with torch.load(weights_only=True)) or a JSON file can hold."""
    return OmegaConf.to_container(OmegaConf.create(cfg), resolve=True, enum_to_str=True)  # type: ignore[return-value]


def config_yaml(cfg: Config) -> str:
    """The config as a run's config.yaml holds it."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_value(tree: Config | dict, key: str) -> Any:
    """The value of a dotted key ("train.epochs") of a Config or of a config as plain values."""
    for part in key.split("."):
        tree = tree[part] if isinstance(tree, dict) else getattr(tree, part)
    return tree


def read_config_file(path: Path) -> Config:
    """A run's config.yaml as a Config (`to_config`); ConfigError, naming the file, when it cannot be read or is
    not a config of this lvae."""
    try:
        tree = OmegaConf.load(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException) as error:
        reason = str(error).splitlines()[0]
        raise ConfigError(f"{path} cannot be read ({reason}): is it truncated or damaged?") from None
    if not isinstance(tree, DictConfig):
        raise ConfigError(f"{path} holds a {type(tree).__name__}, not a run's config")
    try:
        return to_config(tree)
    except (ConfigError, OmegaConfBaseException) as error:
        raise ConfigError(f"{path} is not a config of this lvae: {str(error).splitlines()[0]}") from None


def schema_defaults() -> dict:
    """Every key of the schema with its default, as plain values: the keys that a config may have."""
    return config_to_dict(OmegaConf.structured(Config))


def is_binary_data(name: str, binarize: bool) -> bool:
    """x is binary: binarized on the fly, or stored as 0/1 (Bernoulli output needs no data.binarize)."""
    return binarize or name in BINARY_DATASETS


def likelihood_for_data(name: str, binarize: bool) -> str:
    """The output distribution that fits the data: Bernoulli for binary x, Gaussian for continuous x.
    A preset that sweeps over datasets sets `likelihood: ${likelihood_for_data:${data.name},${data.binarize}}`."""
    return "bernoulli" if is_binary_data(name, binarize) else "gaussian"


def finetune_schedule(budget_name: Optional[str], key: str) -> Any:
    """`key` of the fine-tuning schedule that goes with a budget, configs/finetune_schedule/<budget>.yaml (the
    paper's without a budget): experiment=table1 reads its length and learning rate with it."""
    return OmegaConf.select(_schedule_file(budget_name or "paper"), key)


def _schedule_file(name: str) -> DictConfig:
    """A schedule file with the files its defaults list names merged under it (quick_full_test uses quick's)."""
    path = Path(CONFIG_DIR) / "finetune_schedule" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no fine-tuning schedule for budget={name}: {path} does not exist")
    node = OmegaConf.load(path)
    included = [_schedule_file(entry) for entry in node.pop("defaults", []) if entry != "_self_"]
    return OmegaConf.merge(*included, node)


def register_configs() -> None:
    ConfigStore.instance().store(name="config_schema", node=Config)
    for name, resolver in (("run_dir_name", run_dir_name), ("likelihood_for_data", likelihood_for_data),
                           ("run_folder_ignores", run_folder_ignores), ("finetune_schedule", finetune_schedule),
                           ("default_data_root", default_data_root)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


register_configs()


def compose_config(*overrides: str) -> Config:
    """The run config for these overrides, composed as `python train.py` would and typed (for tests and scripts)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return to_config(compose("config", overrides=list(overrides)))


class ConfigError(ValueError):
    """A configuration value outside its allowed range."""


def _positive(value: Any) -> bool:
    return value > 0


# key -> (check, what is allowed)
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "layers": (lambda v: 1 <= v <= MAX_LAYERS, f"an integer from 1 to {MAX_LAYERS}"),
    "data.name": (lambda v: v in DATASET_REGISTRY, f"one of {', '.join(DATASET_REGISTRY)} (lvae/data/'s registry)"),
    "model.mlp_depth": (lambda v: v >= 0, "an integer >= 0"),
    "model.min_variance": (_positive, "a number > 0"),
    "data.train_subset": (lambda v: v is None or v > 0, "null (all) or an integer > 0"),
    "data.intensity_scale": (lambda v: v in INTENSITY_SCALES,
                             " or ".join(map(str, INTENSITY_SCALES)) + " (grey level / scale = probability)"),
    "warmup_epochs": (lambda v: v >= 0, "an integer >= 0 (0 = no warm-up)"),
    "train.epochs": (lambda v: v >= 0, "an integer >= 0"),
    "train.batch_size": (_positive, "an integer > 0"),
    "train.lr": (_positive, "a number > 0"),
    "train.adam_eps": (_positive, "a number > 0"),
    "train.adam_betas": (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    "train.grad_clip_norm": (_positive, "a number > 0"),
    "train.grad_clip_value": (lambda v: v is None or v > 0, "null (off) or a number > 0"),
    "train.lr_decay": (lambda v: 0 < v <= 1, "a number in (0, 1] (1 = constant learning rate)"),
    "train.iw_samples": (_positive, "an integer > 0"),
    "train.mc_samples": (_positive, "an integer > 0"),
    "train.checkpoint_every": (_positive, "an integer > 0"),
    "eval.iw_samples": (_positive, "an integer > 0"),
    "eval.test_subset": (lambda v: v is None or v > 1,  # one image has no standard error (NaN in metrics.json)
                         "null (all) or an integer > 1, at most the test set's size (checked once it is loaded)"),
    "eval.train_subset": (_positive, "an integer > 0"),
    "eval.memory_budget_mb": (_positive, "an integer > 0"),
    "eval.curve_every": (lambda v: v is None or v >= 0, "null (about 20 points per run), 0 (none) or an integer > 0"),
    "eval.curve_iw_samples": (_positive, "an integer > 0"),
    "eval.curve_images": (_positive, "an integer > 0 (at most the test set's size are used)"),
}


def validate(cfg: Config) -> None:
    """Raise ConfigError naming the first key whose value is not allowed."""
    for key, (is_allowed, allowed) in _RULES.items():
        value = config_value(cfg, key)
        if not is_allowed(value):
            raise ConfigError(f"{key}={value!r} is not allowed: {key} must be {allowed}.")
    for key in ("model.hidden_sizes", "model.latent_sizes"):
        sizes = config_value(cfg, key)
        if len(sizes) < cfg.layers or any(s <= 0 for s in sizes[: cfg.layers]):
            raise ConfigError(
                f"{key}={list(sizes)} does not fit layers={cfg.layers}: "
                f"{key} must list at least {cfg.layers} sizes, all > 0."
            )
    binary_data = is_binary_data(cfg.data.name, cfg.data.binarize)
    if cfg.likelihood == "bernoulli" and not binary_data:
        raise ConfigError(
            "likelihood=bernoulli needs binary data: set data.binarize=true, "
            "or likelihood=gaussian for continuous pixels."
        )
    if cfg.data.intensity_scale != INTENSITY_SCALES[0] and (cfg.data.dequantize
                                                            or cfg.data.name not in GREY_LEVEL_DATASETS):
        raise ConfigError(f"data.intensity_scale={cfg.data.intensity_scale} changes nothing here: it scales 8-bit "
                          f"grey levels that are not dequantized (data={', '.join(GREY_LEVEL_DATASETS)} with "
                          f"data.dequantize=false); data={cfg.data.name}, data.dequantize={cfg.data.dequantize}.")
    if cfg.data.dequantize and (cfg.data.binarize or cfg.data.name not in GREY_LEVEL_DATASETS):
        raise ConfigError(f"data.dequantize=true is for 256-level pixels: it needs data.binarize=false and "
                          f"one of data={', '.join(GREY_LEVEL_DATASETS)} (data={cfg.data.name}).")
    if cfg.data.merge_valid and cfg.data.name != "binarized_mnist":
        raise ConfigError(f"data.merge_valid=true needs data=binarized_mnist (the only dataset with a "
                          f"validation split), not data={cfg.data.name}.")
    if cfg.likelihood == "gaussian" and binary_data:  # a density on {0, 1} grows without bound
        raise ConfigError("likelihood=gaussian needs continuous pixels, not binary data: use likelihood=gaussian "
                          "data.binarize=false data.dequantize=true, or likelihood=bernoulli for binary data.")
    # Training batches hold train.batch_size images, or the whole training set when it is smaller (the
    # incomplete last batch is dropped: lvae.data.ImageData.batches_per_epoch).
    images_per_batch = min(cfg.train.batch_size, cfg.data.train_subset or cfg.train.batch_size)
    if cfg.batch_norm and images_per_batch < 2:
        key = "train.batch_size" if cfg.train.batch_size < 2 else "data.train_subset"
        raise ConfigError(f"{key}={config_value(cfg, key)} gives batches of one image, and batch norm "
                          "normalises over the images of a batch: it needs at least 2. Use "
                          f"{key}=2 or more, or batch_norm=false.")


def _refuse_unknown_keys(tree: DictConfig | dict) -> None:
    """The schema refuses a misspelt key, but not one added with `+` (`+lyers=5`): that one would be ignored."""
    def unknown(tree: dict, schema: dict, prefix: str = "") -> list[tuple[str, list[str]]]:
        found = []
        for key, value in tree.items():
            if key not in schema:
                found.append((prefix + key, [prefix + m for m in difflib.get_close_matches(key, list(schema), n=1)]))
            elif isinstance(value, dict) and isinstance(schema[key], dict):
                found += unknown(value, schema[key], f"{prefix}{key}.")
        return found

    for key, close in unknown(config_to_dict(tree), schema_defaults()):
        raise ConfigError(not_a_setting(key, close))


def not_a_setting(key: str, close: list[str]) -> str:
    """The message for a key that lvae does not have, with the closest one that it has."""
    hint = f" (did you mean {close[0]}?)" if close else ": `python train.py --cfg job` lists the settings"
    return f"{key} is not a setting of lvae{hint}."


def setting_names() -> list[str]:
    """Every key that a command-line override may name: the schema's keys at every level
    (`train`, `train.lr`) and the config groups of configs/ (`experiment`, `budget`, ...)."""
    names = set(flatten(schema_defaults()))
    names |= {".".join(name.split(".")[:depth]) for name in list(names) for depth in range(1, name.count(".") + 1)}
    groups = Path(CONFIG_DIR)
    names |= {str(folder.relative_to(groups)) for folder in groups.rglob("*") if folder.is_dir()}
    return sorted(names)


def check_setting_name(key: str) -> None:
    """Raise ConfigError when `key` (a command-line override's key or config group) is not one of lvae's."""
    if key.startswith("hydra") or key in setting_names():
        return
    names = setting_names()
    raise ConfigError(not_a_setting(key, difflib.get_close_matches(key, names, n=1)))


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when torch sees a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but torch sees no CUDA device: use device=auto or device=cpu.")
    return torch.device(name)


def run_differences(stored: dict, cfg: Config) -> list[str]:
    """'key: stored -> now' for every run-defining key whose value differs.

    A key that the stored config lacks (written before the key existed) counts with
    its schema default, so adding a key with a neutral default keeps old runs resumable.
    """
    old, new = (run_defining_values(config_to_dict(tree)) for tree in (to_config(stored), cfg))
    return [f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}"
            for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]


def evaluation_settings(cfg: Config) -> dict:
    """eval.* as a finished run's numbers depend on it: the keys of HOW_IT_RUNS and CURVE_KEYS are left out."""
    settings = config_to_dict(cfg.eval)
    for key in (*HOW_IT_RUNS, *CURVE_KEYS):
        if key.startswith("eval."):
            settings.pop(key.removeprefix("eval."), None)
    return settings
