"""Fashion-MNIST, static binarized MNIST and dequantized continuous pixels.

Each loader reads a small fixture written in its real on-disk format (gzipped IDX,
.amat text); no network. Plus the errors (missing, truncated, wrong values) and the
bits/dim conversion against hand computations. OMNIGLOT and small NORB: test_dataset_*.py.
"""

import gzip
import math
from pathlib import Path

import pytest
import torch

import lvae.data
import lvae.data.idx
from lvae.data import load_dataset
from lvae.data.errors import DatasetInvalidError, DatasetNotFoundError
from lvae.data.images import ImageData, bits_per_dim
from lvae.run.config import ConfigError, compose_config, validate
from lvae.run.train import run
from tests.helpers.tiny_run import tiny_run

from ..helpers.datasets import write_amat, write_idx_gz, write_synthetic_binarized_mnist, write_synthetic_idx_dataset

CPU = torch.device("cpu")
CONTINUOUS = ("likelihood=gaussian", "data.binarize=false", "data.dequantize=true")


def _cfg(name, root, *overrides):
    return compose_config(f"data={name}", f"data.root={root}", *overrides)


def _pixels(path: Path) -> torch.Tensor:
    """The uint8 payload of a gzipped IDX fixture file (header skipped)."""
    content = gzip.decompress(path.read_bytes())
    ndim = content[3]
    return torch.frombuffer(bytearray(content[4 + 4 * ndim:]), dtype=torch.uint8)


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    """The Debian folder of Fashion-MNIST pointed at an empty place, whatever this machine has installed."""
    monkeypatch.setattr(lvae.data.idx, "DEBIAN_FASHION_MNIST", tmp_path / "debian-absent")
    return tmp_path / "debian-absent"


# ---------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_reads_gzipped_idx_from_the_root(tmp_path, no_debian):
    raw = write_synthetic_idx_dataset(tmp_path / "data" / "FashionMNIST" / "raw")
    data = load_dataset(_cfg("fashion_mnist", tmp_path / "data").data, CPU)
    assert data.train.shape == (40, 784) and data.test.shape == (24, 784)
    assert torch.equal(data.train * 255, _pixels(raw / "train-images-idx3-ubyte.gz").view(40, 784).float())
    assert torch.equal(data.train_labels, _pixels(raw / "train-labels-idx1-ubyte.gz").long())
    assert set(data.test.unique().tolist()) == {0.0, 1.0}, "the test set is binarized once"


def test_fashion_mnist_reads_plain_idx_too(tmp_path, no_debian):
    write_synthetic_idx_dataset(tmp_path / "FashionMNIST" / "raw", compressed=False)
    assert load_dataset(_cfg("fashion_mnist", tmp_path).data, CPU).train.shape == (40, 784)


def test_fashion_mnist_falls_back_to_the_debian_folder_and_prefers_the_root(tmp_path, monkeypatch):
    debian = write_synthetic_idx_dataset(tmp_path / "debian", n_train=20, seed=1)
    monkeypatch.setattr(lvae.data.idx, "DEBIAN_FASHION_MNIST", debian)
    empty_root = tmp_path / "empty"
    data = load_dataset(_cfg("fashion_mnist", empty_root, "data.download=false").data, CPU)
    assert len(data.train) == 20, "read from the Debian folder"
    write_synthetic_idx_dataset(tmp_path / "root" / "FashionMNIST" / "raw", n_train=30, seed=2)
    assert len(load_dataset(_cfg("fashion_mnist", tmp_path / "root").data, CPU).train) == 30, "data.root first"


def test_missing_fashion_mnist_says_where_it_looked(tmp_path, no_debian):
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset(_cfg("fashion_mnist", tmp_path, "data.download=false").data, CPU)
    message = str(error.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message and str(no_debian) in message
    assert "train-images-idx3-ubyte" in message and "data.download=false" in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.root" in message


def test_failed_fashion_mnist_download_is_reported(tmp_path, no_debian, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DatasetNotFoundError, match="The download failed \\(OSError: no network\\)"):
        load_dataset(_cfg("fashion_mnist", tmp_path).data, CPU)


@pytest.mark.parametrize("damage, message", [
    ("truncated gzip", "not a complete gzip file.*it may be truncated"),
    ("truncated content", "bytes where the header .* announces .*it may be truncated"),
    ("bad magic", "its magic number is 00000d03, expected 00000803 .*it is not the file expected here"),
])
def test_damaged_fashion_mnist_file_gets_a_clear_error(tmp_path, no_debian, damage, message):
    raw = write_synthetic_idx_dataset(tmp_path / "FashionMNIST" / "raw")
    path = raw / "t10k-images-idx3-ubyte.gz"
    content = gzip.decompress(path.read_bytes())
    if damage == "truncated gzip":
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "truncated content":
        path.write_bytes(gzip.compress(content[: len(content) - 100]))
    else:
        path.write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + content[4:]))
    before = path.read_bytes()
    with pytest.raises(DatasetInvalidError, match=f"t10k-images-idx3-ubyte.gz is not a valid IDX file .*{message}"):
        load_dataset(_cfg("fashion_mnist", tmp_path).data, CPU)
    assert path.read_bytes() == before, "a damaged file is reported, never overwritten"


def test_fashion_mnist_labels_out_of_range_or_counts_that_differ_are_refused(tmp_path, no_debian):
    raw = write_synthetic_idx_dataset(tmp_path / "FashionMNIST" / "raw")
    write_idx_gz(raw / "train-labels-idx1-ubyte.gz", torch.full((40,), 12))
    with pytest.raises(DatasetInvalidError, match="do not fit together"):
        load_dataset(_cfg("fashion_mnist", tmp_path).data, CPU)
    write_idx_gz(raw / "train-labels-idx1-ubyte.gz", torch.zeros(39))
    with pytest.raises(DatasetInvalidError, match=r"images \(40, 28, 28\), labels \(39,\)"):
        load_dataset(_cfg("fashion_mnist", tmp_path).data, CPU)


def test_real_fashion_mnist_from_the_debian_package():
    if not (lvae.data.idx.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST not installed in {lvae.data.idx.DEBIAN_FASHION_MNIST} "
                    "(apt-get install dataset-fashion-mnist)")
    data = load_dataset(_cfg("fashion_mnist", "/nonexistent", "data.download=false").data, CPU)
    assert data.train.shape == (60000, 784) and data.test.shape == (10000, 784)
    assert torch.equal(data.train_labels.bincount(), torch.full((10,), 6000))
    assert torch.equal(data.test_labels.bincount(), torch.full((10,), 1000))
    assert 0.27 < data.train.mean() < 0.30  # Fashion-MNIST's mean intensity is about 0.286


# ---------------------------------------------------------------- static binarized MNIST


def test_binarized_mnist_is_read_as_stored_and_never_rebinarized(tmp_path):
    written = write_synthetic_binarized_mnist(tmp_path)
    cfg = _cfg("binarized_mnist", tmp_path)
    validate(cfg)  # likelihood=bernoulli with data.binarize=false: fine for already binary data
    data = load_dataset(cfg.data, CPU)
    assert data.already_binary and not data.binarize
    assert torch.equal(data.train, torch.cat([written["train"], written["valid"]]).float()), "merge_valid: true"
    assert torch.equal(data.test, written["test"].float())
    assert (data.train_labels == -1).all() and (data.test_labels == -1).all()
    torch.manual_seed(0)
    batches = torch.cat(list(data.train_batches(8)))
    stored = {tuple(row.tolist()) for row in data.train}
    assert all(tuple(row.tolist()) in stored for row in batches), "batches are stored images, not re-drawn"
    subset = data.train_subset_indices(5)
    assert torch.equal(data.fixed_train_subset(subset, seed=3), data.train[subset])


def test_binarized_mnist_without_valid_trains_on_train_only(tmp_path):
    written = write_synthetic_binarized_mnist(tmp_path)
    data = load_dataset(_cfg("binarized_mnist", tmp_path, "data.merge_valid=false").data, CPU)
    assert torch.equal(data.train, written["train"].float())


@pytest.mark.parametrize("damage, message", [
    ("value 2", "line 2 holds .*expected values 0 or 1"),
    ("fraction", "line 3 holds .*expected values 0 or 1"),
    ("glued", "line 1 holds .*expected values 0 or 1"),
    ("short line", "line 2 has 783 values, expected 784"),
    ("truncated", "line 30 has [0-9]+ values, expected 784"),
    ("empty", "it holds no values"),
])
def test_damaged_amat_gets_a_clear_error(tmp_path, damage, message):
    write_synthetic_binarized_mnist(tmp_path)
    path = tmp_path / "binarized_mnist" / "binarized_mnist_train.amat"
    lines = path.read_text().splitlines(keepends=True)
    if damage == "value 2":
        lines[1] = "2" + lines[1][1:]
    elif damage == "fraction":
        lines[2] = "0.5" + lines[2][1:]
    elif damage == "glued":
        lines[0] = lines[0][:1] + lines[0][2:]  # "0 1 ..." -> "01 ..."
    elif damage == "short line":
        lines[1] = lines[1][2:]
    elif damage == "truncated":
        lines[-1] = lines[-1][:500]
    else:
        lines = []
    path.write_text("".join(lines))
    with pytest.raises(DatasetInvalidError, match=message):
        load_dataset(_cfg("binarized_mnist", tmp_path).data, CPU)


def test_missing_binarized_mnist_says_where_it_looked(tmp_path):
    (tmp_path / "binarized_mnist").mkdir()
    write_amat(tmp_path / "binarized_mnist" / "binarized_mnist_train.amat", torch.zeros(2, 784))
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset(_cfg("binarized_mnist", tmp_path, "data.download=false").data, CPU)
    message = str(error.value)
    assert str(tmp_path / "binarized_mnist") in message
    assert "binarized_mnist_valid.amat, binarized_mnist_test.amat" in message and "train.amat," not in message
    assert "larocheh" in message and "data.root" in message


def test_binarized_mnist_download_goes_through_a_part_file(tmp_path, monkeypatch):
    import torchvision.datasets.utils

    def fake_download(url, root, filename=None, md5=None):
        assert filename.endswith(".amat.part") and url.endswith(filename[:-5])
        write_amat(Path(root) / filename, torch.ones(3, 784))

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", fake_download)
    data = load_dataset(_cfg("binarized_mnist", tmp_path).data, CPU)
    assert data.train.shape == (6, 784) and not list((tmp_path / "binarized_mnist").glob("*.part"))


def test_failed_binarized_mnist_download_is_reported(tmp_path, monkeypatch):
    import torchvision.datasets.utils

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", offline)
    with pytest.raises(DatasetNotFoundError, match="The download failed \\(OSError: no network\\)"):
        load_dataset(_cfg("binarized_mnist", tmp_path).data, CPU)


# ---------------------------------------------------------------- dequantized continuous pixels, bits/dim


def test_dequantized_pixels_stay_in_their_bins_fresh_for_training_fixed_for_test(tmp_path, no_debian):
    raw = write_synthetic_idx_dataset(tmp_path / "FashionMNIST" / "raw")
    cfg = _cfg("fashion_mnist", tmp_path, *CONTINUOUS)
    validate(cfg)
    data = load_dataset(cfg.data, CPU)
    train_pixels = _pixels(raw / "train-images-idx3-ubyte.gz").view(40, 784).float()
    test_pixels = _pixels(raw / "t10k-images-idx3-ubyte.gz").view(24, 784).float()
    assert data.dequantize and torch.equal(data.train * 256, train_pixels)
    assert torch.equal((data.test * 256).floor(), test_pixels), "x = (pixel + u)/256 with u in [0, 1)"
    assert 0 <= data.test.min() and data.test.max() < 1
    assert torch.equal(data.test, load_dataset(cfg.data, CPU).test), "the test noise is seeded"
    other_seed = load_dataset(_cfg("fashion_mnist", tmp_path, *CONTINUOUS, "data.binarization_seed=1").data, CPU)
    assert not torch.equal(data.test, other_seed.test)
    order = torch.arange(40)
    first, second = data.train_batch(order, 0, 40), data.train_batch(order, 0, 40)
    assert not torch.equal(first, second), "fresh noise for every batch"
    u = first * 256 - train_pixels
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    subset = data.train_subset_indices(10)
    assert torch.equal(data.fixed_train_subset(subset, seed=0), data.fixed_train_subset(subset, seed=0))


@pytest.mark.parametrize("overrides, key", [
    (("data=mnist", "data.binarize=false"), "likelihood=bernoulli needs binary data"),
    (("data=fashion_mnist", "likelihood=gaussian", "data.dequantize=true"), "data.dequantize=true is for 256-level"),
    (("data=binarized_mnist", "likelihood=gaussian", "data.dequantize=true"), "data.dequantize=true is for 256"),
    (("data=omniglot", "data.merge_valid=true"), "data.merge_valid=true needs data=binarized_mnist"),
    (("data=omniglot", "likelihood=gaussian", "data.binarize=false", "data.dequantize=true"),
     "data.dequantize=true is for 256-level pixels: .*one of data=mnist, fashion_mnist, norb"),
])
def test_contradictory_data_settings_are_refused(overrides, key):
    with pytest.raises(ConfigError, match=key):
        validate(compose_config(*overrides))


def test_bits_per_dim_against_hand_computations():
    # A uniform density on [0, 1]^D: log p = 0 nats -> exactly 8 bits/dim of 256-level pixels.
    assert bits_per_dim(0.0, 784, 256) == 8.0
    # log p = -1000 nats over D = 784: 1000 / (784 ln 2) = 1.840172 bits above the 8 of the scaling.
    assert bits_per_dim(-1000.0, 784, 256) == pytest.approx(9.840172246, abs=1e-9)
    # Binary pixels (scale 1): 85 nats / (784 ln 2).
    assert bits_per_dim(-85.0, 784) == pytest.approx(0.156414641, abs=1e-9)
    values = bits_per_dim(torch.tensor([0.0, -784 * math.log(2)]), 784, 256)
    assert torch.allclose(values, torch.tensor([8.0, 9.0]))
    # A density that spreads a discrete P(pixel) uniformly over its bin: bits/dim = -log2 P / D.
    log_p_pixels = -3000.0
    assert bits_per_dim(log_p_pixels + 784 * math.log(256), 784, 256) == pytest.approx(3000 / (784 * math.log(2)))


def test_image_data_knows_its_scale():
    images = torch.rand(4, 784)
    assert ImageData(images, torch.zeros(4), images, torch.zeros(4), binarize=True).bits_per_dim(-85.0) == \
        pytest.approx(85 / (784 * math.log(2)))
    assert ImageData(images, torch.zeros(4), images, torch.zeros(4), False, dequantize=True).bits_per_dim(0.0) == 8.0
    assert ImageData(images, torch.zeros(4), images, torch.zeros(4), False, already_binary=True).bits_per_dim(-85.0) \
        == pytest.approx(85 / (784 * math.log(2)))
    assert ImageData(images, torch.zeros(4), images, torch.zeros(4), binarize=False).bits_per_dim(1.0) is None


# ---------------------------------------------------------------- one tiny run per dataset


TINY = tiny_run("train.batch_size=8", "warmup_epochs=0", "eval.iw_samples=4", "eval.train_subset=8")  # tiny files


@pytest.mark.parametrize("name, extra", [
    ("fashion_mnist", CONTINUOUS + ("model.min_variance=1e-3",)),
    ("binarized_mnist", ()),
])
def test_one_epoch_on_each_dataset(tmp_path, no_debian, name, extra):
    root = tmp_path / "data"
    write_synthetic_idx_dataset(root / "FashionMNIST" / "raw")
    write_synthetic_binarized_mnist(root)
    metrics = run(_cfg(name, root, *TINY, *extra), tmp_path / "run")
    assert metrics["dataset"] == name
    assert math.isfinite(metrics["test_log_likelihood"]["mean"])
    assert load_dataset(_cfg(name, root).data, CPU).dim == 784


@pytest.mark.parametrize("name, likelihood", [("mnist", "bernoulli"), ("omniglot", "bernoulli"), ("norb", "gaussian")])
def test_the_three_dataset_preset_gives_each_dataset_its_output(name, likelihood):
    cfg = compose_config("experiment=table1_datasets", f"data={name}")
    validate(cfg)
    assert cfg.likelihood == likelihood
    assert (cfg.model.name, cfg.layers, cfg.batch_norm, cfg.warmup_epochs) == ("lvae", 5, True, 200)
