"""The package's layers point one way, and it uses only public APIs of Hydra and torch.

Read from the source with `ast`, so that an import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent.parent / "lvae"

# The sub-packages of lvae/, lowest first: a module may import its own package and those below it.
PACKAGES = {
    "data": "the datasets: ImageData and its sampling, one module per file format, the registry, downloads",
    "core": "the equations and the evaluation: distributions, models, objectives, estimates, analysis statistics",
    "run": "one run: settings and schema, folder and record, checkpoints, the training loop, its lifecycle",
    "report": "tables, figures, paired comparisons, the paper's analyses and verdicts, from run records",
    "cli": "the commands: train (Hydra), sweep, report, compare, analyze, reproduce, paper",
}
# Above every package: the Python face (lvae/__init__.py) and the `python -m lvae.<command>` entry points.
FACE = "face"
LEVEL = {name: level for level, name in enumerate([*PACKAGES, FACE])}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _package_of(path: Path) -> str:
    """lvae/run/train.py -> "run"; lvae/__init__.py, lvae/report/compare.py and every __main__.py -> the face."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 and path.name != "__main__.py" else FACE


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module, names) of every import in a module of lvae/."""
    return _imports_of_source(path.read_text(), ["lvae", *path.relative_to(PACKAGE).parent.parts])


def _imports_of_source(source: str, package: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """(module, names) of every import; relative ones made absolute within `package` when given."""
    package = package or []
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.append((module, [alias.name for alias in node.names]))
    return found


def _lvae_targets(module: str, names: list[str]) -> list[str]:
    """The packages of lvae that an import reaches: `from lvae.run.train import run` reaches "run"."""
    parts = module.split(".")
    if parts[0] != "lvae":
        return []
    if len(parts) > 1:
        return [parts[1] if parts[1] in PACKAGES else FACE]
    return [name if name in PACKAGES else FACE for name in names]


def test_lvae_is_its_packages_and_a_handful_of_entry_points():
    loose = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "analyze.py", "compare.py", "paper.py", "reproduce.py"]
    assert {path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__"} == set(PACKAGES)


@pytest.mark.parametrize("path", _modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_package(path):
    source = _package_of(path)
    upward = [f"{module} ({target})" for module, names in _imports(path)
              for target in _lvae_targets(module, names) if LEVEL[target] > LEVEL[source]]
    assert not upward, f"{path.relative_to(PACKAGE)} ({source}) imports from a higher package: {', '.join(upward)}"


@pytest.mark.parametrize("path", _modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_module_is_over_450_lines(path):
    """One job per module: a module that grows past this is doing two."""
    assert len(path.read_text().splitlines()) <= 450


LIBRARIES = ("hydra", "torch", "torchvision", "omegaconf")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.endswith("__") and len(name) > 4)  # __version__ is public


def _attribute_chain(node: ast.Attribute) -> list[str]:
    """torch._C._get -> ["torch", "_C", "_get"]; [] when the chain does not start at a plain name."""
    chain = []
    while isinstance(node, ast.Attribute):
        chain.insert(0, node.attr)
        node = node.value
    return [node.id, *chain] if isinstance(node, ast.Name) else []


@pytest.mark.parametrize("path", _modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_private_api_of_hydra_or_torch(path):
    private = [f"import {module} {names}" for module, names in _imports(path)
               if module.split(".")[0] in LIBRARIES
               and any(map(_is_private, [*module.split("."), *names]))]
    private += [".".join(chain) for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Attribute)
                if (chain := _attribute_chain(node)) and chain[0] in LIBRARIES and any(map(_is_private, chain))]
    assert not private, f"{path.name} uses private APIs: {private}"


def test_every_package_ships_in_the_wheel():
    """pyproject.toml lists the packages by hand (configs/ is mapped into the wheel as lvae.configs)."""
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {".".join(["lvae", *path.parent.relative_to(PACKAGE).parts]) for path in PACKAGE.rglob("__init__.py")}
    assert packages | {"lvae.configs"} == set(setuptools["packages"])
    assert setuptools["package-dir"] == {"lvae.configs": "configs"}


def test_tests_import_their_helpers_from_tests_helpers_not_conftest():
    tests = PACKAGE.parent / "tests"
    through_conftest = [path.name for path in tests.rglob("*.py")
                        if any(module.endswith("conftest") for module, _ in _imports_of_source(path.read_text()))]
    assert not through_conftest


@pytest.mark.parametrize("path", sorted((PACKAGE / "core").glob("*.py")), ids=lambda path: path.name)
def test_the_core_takes_plain_arguments_not_the_config(path):
    """The equations and the evaluation never see the Hydra tree: lvae.run.settings turns a run config into
    a ModelSpec and EvalSettings, so the core can be read and used without Hydra."""
    imported = {module for module, _ in _imports(path)}
    config_objects = {m for m in imported if m.split(".")[0] in ("hydra", "omegaconf") or m == "lvae.run.config"}
    assert not config_objects, f"{path.name} imports {sorted(config_objects)}"


# The Hydra tree is turned into the typed Config once (lvae.run.config.to_config): only the schema, the sweep logic
# and the commands that call Hydra know Hydra or OmegaConf.
KNOWS_HYDRA = ("run/config.py", "run/sweep.py", "cli/train_command.py", "cli/reproduce.py")


def test_only_the_schema_the_sweep_and_the_hydra_commands_import_hydra_or_omegaconf():
    importers = sorted(str(path.relative_to(PACKAGE)) for path in _modules()
                       if any(module.split(".")[0] in ("hydra", "omegaconf") for module, _ in _imports(path)))
    assert importers == sorted(KNOWS_HYDRA)


RUN_FOLDER_FILES = ("config.yaml", "checkpoint.pt", "metrics.json", "per_image.pt", "analysis.json")


def _string_constants(path: Path) -> list[str]:
    """The plain string constants of a module's code (docstrings and f-string pieces left out)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(getattr(node, "body", None), list) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    in_fstrings = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings | in_fstrings]


@pytest.mark.parametrize("path", _modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_the_run_folder_and_its_statuses_are_named_in_the_run_record_module_only(path):
    """lvae/run/record.py is the one place that names a run folder's files and the statuses of its record."""
    if path == PACKAGE / "run" / "record.py":
        return
    named = [value for value in _string_constants(path)
             if value in RUN_FOLDER_FILES or value in ("completed", "running", "interrupted", "failed")]
    assert not named, f"{path.name} names {named}: use lvae.run.record"
