"""MNIST loading: the real files (in CI), synthetic IDX files, binarization, clear errors."""

import os
from pathlib import Path
from urllib.error import URLError

import pytest
import torch

from lvae.data import load_dataset
from lvae.data.errors import DatasetInvalidError, DatasetNotFoundError
from lvae.data.files import default_data_root
from lvae.run.config import compose_config

CPU = torch.device("cpu")


def _data_cfg(root, *overrides):
    return compose_config(f"data.root={root}", *overrides).data


def _real_mnist_root() -> Path:
    root = Path(default_data_root())
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide MNIST: not found under {root} (set LVAE_DATA_ROOT)")
        pytest.skip(f"MNIST not found under {root}; set LVAE_DATA_ROOT")
    return root


def test_real_mnist():
    data = load_dataset(_data_cfg(_real_mnist_root()), CPU)
    assert data.train.shape == (60000, 784) and data.test.shape == (10000, 784)
    assert data.train_labels.shape == (60000,) and set(data.test_labels.unique().tolist()) == set(range(10))
    assert 0 <= data.train.min() and data.train.max() == 1.0
    assert set(data.test.unique().tolist()) == {0.0, 1.0}, "the test set is binarized once"
    # Same binary test set on every load; it is not the training set.
    again = load_dataset(_data_cfg(_real_mnist_root()), CPU)
    assert torch.equal(data.test, again.test)
    assert 0.10 < data.test.mean() < 0.16  # MNIST's mean intensity is about 0.13


def test_training_batches_are_rebinarized_every_epoch(synthetic_mnist):
    data = load_dataset(_data_cfg(synthetic_mnist), CPU)
    torch.manual_seed(0)
    first = torch.cat(list(data.train_batches(32)))
    second = torch.cat(list(data.train_batches(32)))
    assert first.shape == (96, 784) and set(first.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(first.sum(0), second.sum(0)), "a fresh binarization (and order) each epoch"
    # Dynamic binarization (ImageData.draw) is unbiased: averaged over many draws it recovers the intensities.
    generator, n = torch.Generator().manual_seed(0), 1000
    draws = [data.draw(data.train, generator) for _ in range(n)]
    assert set(torch.cat(draws).unique().tolist()) == {0.0, 1.0}
    mean, p = torch.stack(draws).mean(0), data.train
    assert ((mean - p).abs() <= 6 * (p * (1 - p) / n).sqrt() + 1e-9).all(), "within 6 standard errors at every pixel"


def test_incomplete_last_batch_is_dropped_unless_the_set_is_tiny(synthetic_mnist):
    data = load_dataset(_data_cfg(synthetic_mnist), CPU)
    assert [len(b) for b in data.train_batches(40)] == [40, 40]
    assert [len(b) for b in data.train_batches(500)] == [96]


def test_test_binarization_depends_only_on_its_seed(synthetic_mnist):
    a = load_dataset(_data_cfg(synthetic_mnist), CPU).test
    torch.manual_seed(123)
    b = load_dataset(_data_cfg(synthetic_mnist), CPU).test
    c = load_dataset(_data_cfg(synthetic_mnist, "data.binarization_seed=1"), CPU).test
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_train_subset(synthetic_mnist):
    data = load_dataset(_data_cfg(synthetic_mnist, "data.train_subset=10"), CPU)
    assert data.train.shape == (10, 784) and data.test.shape == (32, 784)


def test_missing_dataset_says_where_it_looked_and_how_to_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset(_data_cfg(tmp_path, "data.download=false"), CPU)
    message = str(error.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "LVAE_DATA_ROOT" in message and "data.root" in message


def test_wrong_idx_magic_says_what_it_found_not_truncation(synthetic_mnist):
    # The labels file holds a 3-D image matrix (e.g. files swapped): a wrong format, not a truncated file.
    raw = synthetic_mnist / "MNIST" / "raw"
    (raw / "train-labels-idx1-ubyte").write_bytes((raw / "train-images-idx3-ubyte").read_bytes())
    with pytest.raises(DatasetInvalidError) as error:
        load_dataset(_data_cfg(synthetic_mnist), CPU)
    message = str(error.value)
    assert "train-labels-idx1-ubyte is not a valid IDX file" in message
    assert "its magic number is 00000803, expected 00000801 for 1-D unsigned bytes" in message
    assert "truncated" not in message


def test_truncated_idx_still_says_truncated(synthetic_mnist):
    path = synthetic_mnist / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetInvalidError, match="where the header .* announces .* it may be truncated"):
        load_dataset(_data_cfg(synthetic_mnist), CPU)


def test_failed_download_into_an_empty_root_leaves_no_empty_folders(tmp_path, monkeypatch):
    import torchvision.datasets.mnist

    def offline(url, *args, **kwargs):
        raise URLError("no network")

    # torchvision's own MNIST.download runs (it creates MNIST/raw first); only the network is cut.
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DatasetNotFoundError, match="The download failed"):
        load_dataset(_data_cfg(root), CPU)
    assert list(root.iterdir()) == [], "no empty MNIST/raw left behind"
    absent = tmp_path / "absent"
    with pytest.raises(DatasetNotFoundError):
        load_dataset(_data_cfg(absent), CPU)
    assert not absent.exists(), "a root the download created is removed again"
