"""Download the real Broden dataset from its authors' site (MIT CSAIL).

The zip is streamed to a temporary file beside `dest`, unpacked beside `dest`, and only then
renamed into place, so `dest/index.csv` exists exactly when the whole dataset does.
"""

from __future__ import annotations

import logging
import os
import shutil
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from .broden import check_dataset_dest, install_dataset_dir
from .errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

BRODEN_URLS = {
    "broden1_224": "http://netdissect.csail.mit.edu/data/broden1_224.zip",
    "broden1_227": "http://netdissect.csail.mit.edu/data/broden1_227.zip",
}
CHUNK = 1 << 20


def download_broden(variant: str, dest: str | os.PathLike, *, timeout: float = 60.0) -> Path:
    """Fetch Broden `variant` ('broden1_224' or 'broden1_227') into `dest`; returns `dest`."""
    if variant not in BRODEN_URLS:
        raise ConfigError(f"Broden variant must be one of {', '.join(BRODEN_URLS)}, got {variant!r}")
    dest = Path(dest)
    if (dest / "index.csv").is_file():
        log.info("%s already holds a dataset; nothing to download", dest)
        return dest
    check_dataset_dest(dest)
    url = BRODEN_URLS[variant]
    dest.parent.mkdir(parents=True, exist_ok=True)
    archive = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.zip.part"
    try:
        fetch(url, archive, timeout=timeout)
        install_zip(archive, dest)
    finally:
        archive.unlink(missing_ok=True)
    return dest


def fetch(url: str, target: Path, *, timeout: float = 60.0) -> None:
    """Stream `url` to `target` with a progress bar."""
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=Path(url).name, disable=None) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            if total is not None and out.tell() != total:
                raise DatasetError(f"download of {url} stopped after {out.tell()} of {total} bytes; run the rule again")
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DatasetError(
            f"cannot download {url} ({reason}); check the network, or fetch the zip by hand and "
            f"unzip it so that {target.parent}/<dataset>/index.csv exists"
        ) from None


def install_zip(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unpack a Broden zip beside `dest` and move the folder holding index.csv to `dest`."""
    archive, dest = Path(archive), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = dest.parent / f".{dest.name}.unzip-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    parts = PurePosixPath(name.replace("\\", "/")).parts
                    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                        raise DatasetError(
                            f"{archive}: member {name!r} would be written outside the "
                            "dataset folder; refusing to unpack"
                        )
                zf.extractall(work)
        except zipfile.BadZipFile as exc:
            raise DatasetError(f"{archive}: not a valid zip file ({exc}); download it again") from None
        found = sorted(work.glob("index.csv")) + sorted(work.glob("*/index.csv"))
        if not found:
            raise DatasetError(f"{archive}: holds no index.csv at its top or one folder down; not a Broden dataset")
        install_dataset_dir(found[0].parent, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("Broden installed in %s", dest)
    return dest
