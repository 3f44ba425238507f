"""Finding, downloading and reading dataset files: every failure says where it looked and how to fix it."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from lvae.data.errors import DatasetInvalidError, DatasetNotFoundError

if TYPE_CHECKING:  # lvae.data.settings reads this module's default_data_root
    from lvae.data.settings import DataConfig

log = logging.getLogger(__name__)


DATA_ROOT_ENV = "LVAE_DATA_ROOT"


def default_data_root() -> str:
    """$LVAE_DATA_ROOT if set, else ./data (where torchvision downloads to)."""
    return os.environ.get(DATA_ROOT_ENV, "data")


def data_root(cfg: DataConfig) -> Path:
    """data.root as an absolute path: messages name the folder checked, whatever the working directory."""
    return Path(cfg.root).expanduser().absolute()


def missing_error(dataset: str, where: dict[Path, list[str]], download: bool, download_error: Exception | None,
                   fix: str) -> DatasetNotFoundError:
    """DatasetNotFoundError naming every place looked in and what was missing there."""
    looked = "; ".join(f"{folder}{'' if folder.is_dir() else ' (no such folder)'}: missing {', '.join(names)}"
                       for folder, names in where.items())
    reason = ("Nothing was downloaded: data.download=false" if not download
              else f"The download failed ({type(download_error).__name__}: {download_error})")
    return DatasetNotFoundError(f"{dataset} not found. Looked in {looked}. {reason}. {fix}")


def folders_to_create(folders: list[Path]) -> list[Path]:
    """The folders among `folders` and their parents that do not exist yet, deepest first: what creating them
    (a download, a run folder) will add, and `remove_empty_folders` takes away again if it fails."""
    absent = set()
    for folder in folders:
        for path in (folder, *folder.parents):
            if path.exists():
                break
            absent.add(path)
    return sorted(absent, key=lambda path: len(path.parts), reverse=True)


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove each of `folders` (deepest first, as folders_to_create gives them) that is empty: what a failed
    download or a refused launch created. One that holds something is not ours to remove."""
    for folder in folders:
        with contextlib.suppress(OSError):  # not empty, or gone
            folder.rmdir()


def find_files(dataset: str, folders: list[Path], names: list[str], download: bool,
                fetch: Callable[[], None], fix: str, exists: Callable[[Path, str], bool]) -> Path:
    """The first of `folders` that holds all `names`, after fetch() when none does and download is true.

    A fetch that fails leaves no empty folder behind: only the files it completed.
    """
    def missing() -> dict[Path, list[str]]:
        return {folder: [name for name in names if not exists(folder, name)] for folder in folders}

    found = [folder for folder, lacking in missing().items() if not lacking]
    download_error = None
    if not found and download:
        new_folders = folders_to_create(folders)
        try:
            fetch()
        except Exception as error:  # no network, HTTP errors, checksum mismatch
            download_error = error
        remove_empty_folders(new_folders)
        found = [folder for folder, lacking in missing().items() if not lacking]
        if not found and download_error is None:
            download_error = RuntimeError("it ran but left the files missing")
    if not found:
        raise missing_error(dataset, missing(), download, download_error, fix)
    return found[0]


def digest(path: Path, algorithm: str, prefix: bytes = b"") -> str:
    """The hex digest of prefix + the file's bytes, read in chunks."""
    digest = hashlib.new(algorithm, prefix)
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, path: Path, checksum: Optional[Callable[[Path], str]] = None,
              expected: Optional[str] = None) -> None:
    """url -> path, through path.part: an interrupted, failed or corrupt download leaves no file behind.

    checksum(file) must give `expected` (when given); nothing is renamed into place otherwise.
    """
    from torchvision.datasets.utils import download_url  # imported here: torchvision is slow to import

    part = path.with_name(f"{path.name}.part")
    part.unlink(missing_ok=True)  # download_url would take a leftover of an interrupted download for complete
    try:
        download_url(url, str(path.parent), part.name)
        if checksum is not None and (found := checksum(part)) != expected:
            raise DatasetInvalidError(f"{url} arrived damaged: checksum {found}, expected {expected}")
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    part.replace(path)


def plain_or_gz(folder: Path, name: str) -> Optional[Path]:
    """folder/name, or folder/name.gz (as downloaded), whichever exists."""
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def invalid_file(path: Path, kind: str, problem: str, truncated: bool) -> DatasetInvalidError:
    """The error for a damaged file: "may be truncated" only when it is shorter than it should be."""
    advice = ("it may be truncated. Delete it and download it again" if truncated
              else "it is not the file expected here. Put the original file there (or delete it and download it "
                   "again)")
    return DatasetInvalidError(f"{path} is not a valid {kind} file ({problem}; {path.stat().st_size} bytes on disk): "
                               f"{advice}.")


def read_all(path: Path, kind: str) -> bytes:
    """The file's bytes, decompressed when it ends in .gz."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as error:
        raise invalid_file(path, kind, f"not a complete gzip file: {error}", truncated=True) from error


def warn_if_partial(dataset: str, split: str, count: int, full: int) -> None:
    if count != full:
        log.warning("%s %s has %d images, the full set %d", dataset, split, count, full)
