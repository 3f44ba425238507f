"""A run's identity: the folder its overrides name, and the keys that define what it computes.

Written once: Hydra's run folders (configs/config.yaml, configs/layout/preset.yaml) read
RUN_FOLDER_IGNORES through the `run_folder_ignores` resolver, and resuming, a finished run's
record and the reports compare runs by `run_defining_values`.
"""

from __future__ import annotations

import hashlib
from typing import Any

MAX_RUN_DIR_NAME = 200  # bytes; file systems allow 255 per name


def run_dir_name(override_dirname: str) -> str:
    """Run directories are named by their command-line overrides (`defaults` when none),
    so that the same command finds the same directory again and resumes it. A path among them
    (`init_from=...`) has its slashes made underscores, so that it names one folder, not a tree of them, and
    the quotes that the command line needs around a value holding = or , are left out of the name. A
    name too long for a file system is cut, with a hash of the whole name appended (the same overrides, the
    same name)."""
    name = (override_dirname or "defaults").replace("/", "_").replace("'", "").replace('"', "")
    if len(name.encode()) <= MAX_RUN_DIR_NAME:
        return name
    digest = hashlib.blake2b(name.encode(), digest_size=8).hexdigest()
    return f"{name.encode()[:MAX_RUN_DIR_NAME - 18].decode(errors='ignore')}-{digest}"


# A run's identity, written once. HOW_IT_RUNS: the keys that change how a run is run or where its data
# lies, not what it computes. They never name a run folder (Hydra's override_dirname.exclude_keys, read
# by configs/config.yaml and configs/layout/preset.yaml), a resumed run may change them, and they are
# not a finished run's settings. A run may also continue with CONTINUABLE changed: more epochs (training
# continues from the last checkpoint), another evaluation (redone), another budget name.
HOW_IT_RUNS = ("resume", "device", "allow_tf32", "train.progress", "train.checkpoint_every", "train.compile",
               "eval.compile", "data.root", "data.download")
CONTINUABLE = ("train.epochs", "eval", "budget_name")
# The eval.* keys of the curves measured during training: they change no end-of-run number (a finished run is
# not evaluated again for them); a run continued with other values records its later points with them.
CURVE_KEYS = ("eval.curve_every", "eval.curve_iw_samples", "eval.curve_images")
RUN_FOLDER_IGNORES = HOW_IT_RUNS


def run_folder_ignores(*extra: str) -> list[str]:
    """RUN_FOLDER_IGNORES and `extra` (a preset adds the keys its sweep folder already names)."""
    return [*RUN_FOLDER_IGNORES, *extra]


# Everything else defines the run: a checkpoint resumes only with the same values.
NOT_RUN_DEFINING = (*HOW_IT_RUNS, *CONTINUABLE)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}: a config tree as dotted keys."""
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: tree}


def run_defining_values(tree: dict) -> dict[str, Any]:
    """key -> value of every key of a config (as plain values) that defines what a run computes."""
    return {key: value for key, value in flatten(tree).items()
            if not any(key == k or key.startswith(k + ".") for k in NOT_RUN_DEFINING)}


