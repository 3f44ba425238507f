"""small NORB with a Gaussian output, read from fixtures in NORB's own binary matrix format.

The fixture files carry real headers (little-endian magic 0x1E3D4C55 for bytes or
0x1E3D4C54 for int32, the number of dimensions, at least three dimensions stored, then the
data), 96x96 stereo pairs, plain or gzipped. No network: downloads are simulated at
torchvision's download_url.
"""

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lvae.data
import lvae.data.files
import lvae.data.norb
from lvae.data import load_dataset
from lvae.data.errors import DatasetInvalidError, DatasetNotFoundError
from lvae.data.norb import NORB_FILES
from lvae.run.config import validate
from lvae.run.train import run

from .test_datasets import CPU, TINY, _cfg

GAUSSIAN = ("likelihood=gaussian",)
MAGIC = {np.dtype(np.uint8): 0x1E3D4C55, np.dtype("<i4"): 0x1E3D4C54}


def write_norb_matrix(path: Path, array: np.ndarray, compressed: bool = False) -> None:
    """NORB's binary matrix file: magic, ndim, max(3, ndim) dimensions (unused ones 1), the data (little-endian)."""
    dims = list(array.shape) + [1] * (3 - array.ndim)
    content = (struct.pack("<Ii", MAGIC[array.dtype], array.ndim) + struct.pack(f"<{len(dims)}i", *dims)
               + array.tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(content) if compressed else content)


def norb_path(root: Path, split: str, what: str, compressed: bool = False) -> Path:
    name = NORB_FILES[split][what][0]
    return root / "smallnorb" / (f"{name}.gz" if compressed else name)


def write_synthetic_norb(root: Path, pairs=(6, 4), compressed: bool = False) -> dict[str, np.ndarray]:
    """root/smallnorb/ -dat and -cat files of both splits. Pair i of a split shows camera 0 as a flat grey
    of 2 i + 10 and camera 1 as one of 2 i + 11 (+ 100 for the test split): every image is told apart by
    its grey level. Category of pair i: i % 5."""
    written = {}
    for split, n, offset in zip(("train", "test"), pairs, (10, 110)):
        levels = offset + 2 * np.arange(n)[:, None] + np.arange(2)[None, :]  # (n pairs, 2 cameras)
        images = np.broadcast_to(levels[:, :, None, None], (n, 2, 96, 96)).astype(np.uint8)
        categories = (np.arange(n) % 5).astype("<i4")
        write_norb_matrix(norb_path(root, split, "dat", compressed), images, compressed)
        write_norb_matrix(norb_path(root, split, "cat", compressed), categories, compressed)
        written[split], written[f"{split}_categories"] = images, categories
    return written


def test_norb_uses_both_cameras_once_at_32x32_dequantized(tmp_path):
    written = write_synthetic_norb(tmp_path)
    cfg = _cfg("norb", tmp_path, *GAUSSIAN)
    validate(cfg)
    data = load_dataset(cfg.data, CPU)
    assert data.train.shape == (12, 1024) and data.test.shape == (8, 1024), "2 images a pair, 32x32"
    assert data.dequantize and not data.binarize
    for split, x, labels in (("train", data.train, data.train_labels), ("test", data.test, data.test_labels)):
        pixels = (x * 256).floor()
        assert (pixels == pixels[:, :1]).all(), "a flat image stays flat when shrunk"
        levels = pixels[:, 0].long().tolist()
        assert sorted(levels) == sorted(written[split][:, :, 0, 0].flatten().tolist()), "each camera once"
        for level, label in zip(levels, labels.tolist()):
            assert label == written[f"{split}_categories"][(level % 100 - 10) // 2], "an image keeps its category"
    assert torch.equal(data.train * 256, (data.train * 256).round()), "training pixels are stored, noise per batch"
    assert 0 < data.test.min() and data.test.max() < 1 and not torch.equal(data.test * 256, (data.test * 256).round())
    assert data.bits_per_dim(0.0) == 8.0 and data.dim == 1024
    assert torch.equal(load_dataset(cfg.data, CPU).test, data.test), "a fixed order and test noise"


def test_norb_shrinks_with_pils_antialiased_bicubic_filter_upright(tmp_path):
    write_synthetic_norb(tmp_path, pairs=(1, 1))
    image = np.zeros((96, 96), dtype=np.uint8)
    image[:, :24] = 200  # a bright band at the left
    image[70:, :] = 90  # a grey band at the bottom
    pair = np.stack([image, image.T])[None]  # camera 1 sees the transpose
    write_norb_matrix(norb_path(tmp_path, "train", "dat"), pair)
    data = load_dataset(_cfg("norb", tmp_path, *GAUSSIAN).data, CPU)
    shrunk = [(x * 256).view(32, 32).numpy().astype(int) for x in data.train]
    # The camera-0 image is bright at the left (not at the top, as its transpose): upright.
    ours = next(view for view in shrunk if view[16, 2] > view[2, 16])
    assert ours[5, 2] == pytest.approx(200, abs=2) and ours[30, 16] == pytest.approx(90, abs=2)
    for view, camera in zip((ours, next(view for view in shrunk if view is not ours)), pair[0]):
        reference = np.asarray(Image.fromarray(camera).resize((32, 32), Image.Resampling.BICUBIC)).astype(int)
        assert np.abs(view - reference).max() <= 1, "PIL's antialiased bicubic, up to rounding"


def test_norb_reads_gzipped_files_as_downloaded(tmp_path):
    write_synthetic_norb(tmp_path, compressed=True)
    plain = tmp_path / "plain"
    write_synthetic_norb(plain)
    gzipped, stored = (load_dataset(_cfg("norb", root, *GAUSSIAN).data, CPU) for root in (tmp_path, plain))
    assert torch.equal(gzipped.train, stored.train) and torch.equal(gzipped.test, stored.test)


@pytest.mark.parametrize("damage, message", [
    ("truncated data", "it ends within pair 5 of the 6 its header announces.*it may be truncated"),
    ("truncated gzip", "not a complete gzip file.*it may be truncated"),
    ("truncated header", "the header ends within its dimensions.*it may be truncated"),
    ("integer magic", "its magic number is 0x1e3d4c54 with 4 dimensions, expected 0x1e3d4c55 \\(byte matrix\\) "
                      "with 4.*not the file expected here"),
    ("one camera", r"its header announces \[6, 1, 96, 96\], expected N > 0 pairs x 2 cameras x 96 x 96"),
    ("trailing bytes", "it goes on after the 6 pairs its header announces"),
    ("categories short", "bytes of data where its header announces 6 integers.*it may be truncated"),
    ("categories count", "do not fit together: 6 pairs, 5 categories"),
    ("category 7", r"categories in \[0, 7\]; expected one category 0-4 a pair"),
])
def test_damaged_norb_file_gets_a_clear_error_and_is_left_alone(tmp_path, damage, message):
    written = write_synthetic_norb(tmp_path)
    dat, cat = norb_path(tmp_path, "train", "dat"), norb_path(tmp_path, "train", "cat")
    path = cat if damage.startswith("categor") else dat
    content = path.read_bytes()
    if damage == "truncated data":
        path.write_bytes(content[:-100])
    elif damage == "truncated gzip":
        path.unlink()
        path = dat.with_name(f"{dat.name}.gz")
        compressed = gzip.compress(content)
        path.write_bytes(compressed[: len(compressed) // 2])
    elif damage == "truncated header":
        path.write_bytes(content[:14])
    elif damage == "integer magic":
        path.write_bytes(struct.pack("<I", 0x1E3D4C54) + content[4:])
    elif damage == "one camera":
        write_norb_matrix(path, np.ascontiguousarray(written["train"][:, :1]))
    elif damage == "trailing bytes":
        path.write_bytes(content + b"\0")
    elif damage == "categories short":
        path.write_bytes(content[:-2])
    elif damage == "categories count":
        write_norb_matrix(path, written["train_categories"][:5])
    else:
        write_norb_matrix(path, np.array([0, 1, 7, 2, 3, 4], dtype="<i4"))
    before = path.read_bytes()
    with pytest.raises(DatasetInvalidError, match=message):
        load_dataset(_cfg("norb", tmp_path, *GAUSSIAN).data, CPU)
    assert path.read_bytes() == before


def test_missing_norb_names_the_files_the_folder_and_the_url(tmp_path):
    write_synthetic_norb(tmp_path)
    norb_path(tmp_path, "test", "cat").unlink()
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset(_cfg("norb", tmp_path, *GAUSSIAN, "data.download=false").data, CPU)
    message = str(error.value)
    assert f"{tmp_path / 'smallnorb'}: missing {NORB_FILES['test']['cat'][0]}." in message
    assert lvae.data.norb.NORB_URL in message and "data.download=false" in message and "data.root" in message


def test_norb_downloads_are_md5_checked_and_a_failure_leaves_nothing(tmp_path, monkeypatch):
    import torchvision.datasets.utils

    served = tmp_path / "served"
    write_synthetic_norb(served, compressed=True)
    requested = []

    def serve(url, root, filename=None, md5=None):
        requested.append(url)
        Path(root).mkdir(parents=True, exist_ok=True)  # as download_url does
        source = served / "smallnorb" / url.rsplit("/", 1)[1]
        (Path(root) / filename).write_bytes(source.read_bytes())

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", serve)
    with pytest.raises(DatasetNotFoundError, match="training-dat.mat.gz arrived damaged: checksum [0-9a-f]{32}, "
                                                   "expected 66054832f9accfe74a0f4c36a75bc0a2"):
        load_dataset(_cfg("norb", tmp_path / "root", *GAUSSIAN).data, CPU)
    assert requested == [f"{lvae.data.norb.NORB_URL}{NORB_FILES['train']['dat'][0]}.gz"]
    assert not (tmp_path / "root").exists(), "no damaged file, no empty folder"
    # With the served files' own checksums the four downloads are accepted.
    files = {split: {what: (name, lvae.data.files.digest(served / "smallnorb" / f"{name}.gz", "md5"))
                     for what, (name, _) in kinds.items()} for split, kinds in NORB_FILES.items()}
    monkeypatch.setattr(lvae.data.norb, "NORB_FILES", files)
    assert load_dataset(_cfg("norb", tmp_path / "root", *GAUSSIAN).data, CPU).train.shape == (12, 1024)
    assert len(requested) == 5 and not list((tmp_path / "root").rglob("*.part"))


def test_one_epoch_on_the_norb_fixture(tmp_path):
    write_synthetic_norb(tmp_path / "data", pairs=(12, 4))
    metrics = run(_cfg("norb", tmp_path / "data", *TINY, *GAUSSIAN, "model.min_variance=1e-3"), tmp_path / "run")
    assert metrics["dataset"] == "norb" and metrics["likelihood"] == "gaussian" and metrics["dequantized"]
    ll = metrics["test_log_likelihood"]
    assert ll["images"] == 8 and math.isfinite(ll["mean"])
    assert ll["bits_per_dim"] == pytest.approx(-(ll["mean"] - 1024 * math.log(256)) / (1024 * math.log(2)))
