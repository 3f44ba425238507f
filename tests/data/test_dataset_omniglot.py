"""OMNIGLOT as the paper used it: Burda et al.'s chardata.mat, read from a fixture in the real format.

The fixture is written by scipy.io.savemat exactly as the IWAE repository lays the file
out (one image a column, column-major; one-hot alphabets as C x N), so the loader's
orientation is checked against MATLAB's order rather than against itself. No network:
downloads are simulated at torchvision's download_url.
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import lvae.data
import lvae.data.omniglot
from lvae.data import load_dataset
from lvae.data.errors import DatasetInvalidError, DatasetNotFoundError
from lvae.run.config import validate
from lvae.run.train import run

from .test_datasets import CPU, TINY, _cfg

# An asymmetric glyph: an L whose mirror images and transpose all differ from it.
GLYPH = np.zeros((28, 28))
GLYPH[3:25, 4:8] = 1.0  # the long vertical stroke, at the left
GLYPH[21:25, 4:18] = 0.6  # the short horizontal stroke, at the bottom


def write_chardata(path: Path, train: np.ndarray, test: np.ndarray, train_alphabets: np.ndarray,
                   test_alphabets: np.ndarray, alphabets: int = 50, **extra) -> None:
    """chardata.mat as the IWAE repository holds it: `data` / `testdata` 784 x N (each image a column,
    in MATLAB's column-major order), one-hot `target` / `testtarget` alphabets x N; `extra` replaces any
    (None: leaves it out)."""
    from scipy.io import savemat

    def columns(images: np.ndarray) -> np.ndarray:
        return np.stack([image.flatten(order="F") for image in images], axis=1)

    def one_hot(labels: np.ndarray) -> np.ndarray:
        return np.eye(alphabets)[:, labels]

    variables = {"data": columns(train), "testdata": columns(test), "target": one_hot(train_alphabets),
                 "testtarget": one_hot(test_alphabets), **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {name: value for name, value in variables.items() if value is not None},
            do_compression=True)  # as MATLAB saves by default


def write_synthetic_omniglot(root: Path, n_train: int = 12, n_test: int = 6) -> dict[str, np.ndarray]:
    """root/omniglot/chardata.mat: image i is GLYPH x a brightness of its own, alphabet i % 3."""
    images = {split: GLYPH * np.linspace(0.3, 1.0, n)[:, None, None] for split, n in (("train", n_train),
                                                                                        ("test", n_test))}
    labels = {split: np.arange(len(images[split])) % 3 for split in images}
    write_chardata(root / "omniglot" / "chardata.mat", images["train"], images["test"], labels["train"],
                   labels["test"])
    return {**images, **{f"{split}_labels": labels[split] for split in labels}}


def test_chardata_orientation_counts_values_and_labels(tmp_path):
    written = write_synthetic_omniglot(tmp_path)
    cfg = _cfg("omniglot", tmp_path)
    validate(cfg)
    data = load_dataset(cfg.data, CPU)
    assert data.train.shape == (12, 784) and data.test.shape == (6, 784)
    images = data.train.view(-1, 28, 28).double()
    brightness = images.amax(dim=(1, 2))
    # Every image is the upright glyph (not its transpose or mirror), with its own brightness as stored.
    for image, bright in zip(images, brightness):
        assert torch.allclose(image, torch.from_numpy(GLYPH) * bright, atol=1e-6)
    assert images[0, 10, 5] > 0 and images[0, 5, 10] == 0, "the long stroke is vertical and at the left"
    expected = sorted(zip(written["train"].max(axis=(1, 2)).round(4), written["train_labels"]))
    assert sorted(zip(brightness.numpy().round(4), data.train_labels.tolist())) == expected, "labels follow images"
    assert data.train.min() >= 0 and data.train.max() <= 1 and not data.already_binary
    assert set(data.test.unique().tolist()) <= {0.0, 1.0}, "the test set is binarized once"
    assert data.binarize and data.bits_per_dim(-math.log(2) * 784) == pytest.approx(1.0)
    again = load_dataset(cfg.data, CPU)
    assert torch.equal(data.train, again.train) and torch.equal(data.test, again.test), "a fixed order and draw"


def test_missing_chardata_names_the_file_the_folder_and_the_url(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset(_cfg("omniglot", tmp_path, "data.download=false").data, CPU)
    message = str(error.value)
    assert f"{tmp_path / 'omniglot'} (no such folder): missing chardata.mat" in message
    assert lvae.data.omniglot.OMNIGLOT_URL in message and "data.download=false" in message and "data.root" in message


def test_offline_download_fails_clearly_and_leaves_nothing(tmp_path, monkeypatch):
    import torchvision.datasets.utils

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", offline)
    with pytest.raises(DatasetNotFoundError, match=r"The download failed \(OSError: no network\)"):
        load_dataset(_cfg("omniglot", tmp_path / "root").data, CPU)
    assert not (tmp_path / "root").exists(), "no empty folder is left behind"


def test_download_is_checked_against_the_iwae_repository(tmp_path, monkeypatch):
    import torchvision.datasets.utils

    write_synthetic_omniglot(tmp_path / "served")
    fixture = tmp_path / "served" / "omniglot" / "chardata.mat"

    def serve(url, root, filename=None, md5=None):
        assert url == lvae.data.omniglot.OMNIGLOT_URL and filename == "chardata.mat.part"
        Path(root).mkdir(parents=True, exist_ok=True)  # as download_url does
        (Path(root) / filename).write_bytes(fixture.read_bytes())

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", serve)
    folder = tmp_path / "root" / "omniglot"
    with pytest.raises(DatasetNotFoundError, match="chardata.mat arrived damaged: checksum [0-9a-f]{40}, expected "
                                                   f"{lvae.data.omniglot.OMNIGLOT_GIT_BLOB}"):
        load_dataset(_cfg("omniglot", tmp_path / "root").data, CPU)
    assert not folder.exists(), "neither the damaged download nor its folder is kept"
    # The same bytes are accepted when they are the repository's (git's blob id of the served file).
    monkeypatch.setattr(lvae.data.omniglot, "OMNIGLOT_GIT_BLOB", lvae.data.omniglot._git_blob_id(fixture))
    assert load_dataset(_cfg("omniglot", tmp_path / "root").data, CPU).train.shape == (12, 784)
    assert sorted(path.name for path in folder.iterdir()) == ["chardata.mat"]


@pytest.mark.parametrize("damage, message", [
    ("truncated", "scipy cannot read it: .*it may be truncated"),
    ("not a mat file", "scipy cannot read it: .*it may be truncated"),
    ("no testdata", "it holds no variable testdata"),
    ("rows", r"data is \(783, 12\) and target \(50, 12\), expected 784 x N"),
    ("targets", r"testdata is \(784, 6\) and testtarget \(50, 5\)"),
    ("255 scale", r"data holds values in \[0.0, 255.0\], expected intensities in \[0, 1\]"),
])
def test_damaged_chardata_gets_a_clear_error_and_is_left_alone(tmp_path, damage, message):
    written = write_synthetic_omniglot(tmp_path)
    path = tmp_path / "omniglot" / "chardata.mat"
    columns = np.stack([image.flatten(order="F") for image in written["train"]], axis=1)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "not a mat file":
        path.write_bytes(b"<html>404: Not Found</html>")
    else:
        extra = {"no testdata": {"testdata": None}, "rows": {"data": columns[:783]},
                 "targets": {"testtarget": np.eye(50)[:, :5]}, "255 scale": {"data": columns * 255}}[damage]
        write_chardata(path, written["train"], written["test"], written["train_labels"], written["test_labels"],
                       **extra)
    before = path.read_bytes()
    with pytest.raises(DatasetInvalidError, match=f"chardata.mat is not a valid OMNIGLOT chardata.mat file.*{message}"):
        load_dataset(_cfg("omniglot", tmp_path).data, CPU)
    assert path.read_bytes() == before


def test_one_epoch_on_the_chardata_fixture(tmp_path):
    write_synthetic_omniglot(tmp_path / "data", n_train=24, n_test=8)
    metrics = run(_cfg("omniglot", tmp_path / "data", *TINY), tmp_path / "run")
    assert metrics["dataset"] == "omniglot" and metrics["likelihood"] == "bernoulli"
    ll = metrics["test_log_likelihood"]
    assert ll["images"] == 8 and math.isfinite(ll["mean"]) and ll["mean"] < 0
    assert ll["bits_per_dim"] == pytest.approx(-ll["mean"] / (784 * math.log(2)))
