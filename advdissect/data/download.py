"""Downloads that survive a dead host, a cut connection and a damaged file.

`download_file` tries each source of a file in order. A transfer cut midway leaves its bytes in a
`.part` file beside the target, which the next attempt (or the next run) continues with an HTTP
Range request. The complete file must match the sha256 pinned for it and the one recorded beside
it (`<file>.sha256`, as `store.sha256_record` names it) where there are such; a file that does
not is renamed aside, never deleted, and the next source is tried.

`download_broden` fetches the real Broden dataset and unpacks it beside `dest`, renaming it into
place only when whole, so `dest/index.csv` exists exactly when the whole dataset does.
(`models.download_url_weights` fetches a model's weights file with `download_file`.)
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from ..errors import AdvDissectError, ConfigError, DatasetError
from ..store import read_sha256_record, sha256_of, sha256_record, write_sha256_record
from .broden import check_dataset_dest, install_dataset_dir

log = logging.getLogger(__name__)

# The published Broden variants and their image size (px, square; the segmentations are half of
# it). Both hold 63,305 images and label numbers 0..1197.
BRODEN_IMAGE_SIZE = {"broden1_224": 224, "broden1_227": 227}
BRODEN_IMAGES = dict.fromkeys(BRODEN_IMAGE_SIZE, 63305)
BRODEN_LABELS = 1198
# Every known source of each Broden archive, tried in order; `datasets.<name>.mirrors` adds more.
# No digest of either archive is published; the first download records one (see download_broden).
BRODEN_SOURCES = {
    "broden1_224": (
        # The authors' host, as CSAILVision/NetDissect-Lite script/dlbroden.sh names it (http only).
        "http://netdissect.csail.mit.edu/data/broden1_224.zip",
    ),
    "broden1_227": (
        "http://netdissect.csail.mit.edu/data/broden1_227.zip",
        # The Wayback Machine's copy of the authors' file, as Aer-3888/tiny_netdissect README.md gives it.
        "https://web.archive.org/web/20240418040425id_/http://netdissect.csail.mit.edu/data/broden1_227.zip",
    ),
}
LOCAL_HINT = (
    "fetch the zip by other means, unzip it and set the dataset's `source: local` with `path:` naming the "
    "folder that holds index.csv, label.csv, category.csv, the c_*.csv files and images/ "
    "(`n_images` is then required)"
)
CHUNK = 1 << 20
RETRIES = 3
WAIT = 5.0  # seconds before the second attempt at a source; longer before each later one


class _SourceFailed(Exception):
    """This source cannot deliver the file now; the next one is tried."""


class _Cut(Exception):
    """A transfer stopped early; the next attempt continues it."""


def download_file(
    urls: Sequence[str],
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    retries: int = RETRIES,
    wait: float = WAIT,
    timeout: float = 60.0,
    error: type[AdvDissectError] = DatasetError,
    hint: str = "",
) -> str:
    """Fetch `dest` from the first of `urls` that delivers it whole and with the right sha256;
    returns its sha256. When every source fails, raises `error` naming each URL and why, then `hint`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        part = _part_path(dest, url)
        try:
            _fetch_with_retries(url, part, retries=retries, wait=wait, timeout=timeout)
            digest = _checked_digest(part, dest, sha256)
        except _SourceFailed as exc:
            log.warning("%s: %s", url, exc)
            failures.append(f"{url} ({exc})")
            continue
        os.replace(part, dest)
        return digest
    raise error(f"cannot download {dest.name} from any of its {len(urls)} source(s): {'; '.join(failures)}; {hint}")


def download_checked(
    urls: Sequence[str],
    dest: str | os.PathLike,
    check: Callable[[Path], object],
    *,
    what: str,
    error: type[AdvDissectError] = DatasetError,
    **fetch: Any,
) -> str:
    """download_file (`fetch`: its keywords), then `check(dest)`: a file it refuses with `error` is
    set aside, named in the error as the `what` kept aside; a file it accepts gets its sha256
    recorded beside it. Returns the sha256."""
    dest = Path(dest)
    digest = download_file(urls, dest, error=error, **fetch)
    try:
        check(dest)
    except error as exc:
        aside = set_aside(dest, dest, digest)
        raise error(f"{exc}; the {what} is kept aside as {aside}") from None
    write_sha256_record(dest, digest)
    return digest


def _part_path(dest: Path, url: str) -> Path:
    # One partial file per source: bytes from two hosts are never joined into one file.
    key = hashlib.sha256(url.encode()).hexdigest()[:8]
    return dest.with_name(f".{dest.name}.{key}.part")


def _fetch_with_retries(url: str, part: Path, *, retries: int, wait: float, timeout: float) -> None:
    for attempt in range(1, retries + 1):
        try:
            _fetch_once(url, part, timeout)
            return
        except urllib.error.HTTPError as exc:
            # A missing or forbidden file stays so; a busy or failing server may recover.
            if exc.code < 500 and exc.code not in (408, 429):
                raise _SourceFailed(f"HTTP {exc.code} {exc.reason}") from None
            reason = f"HTTP {exc.code} {exc.reason}"
        except (_Cut, OSError, http.client.HTTPException) as exc:
            reason = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
        log.warning("%s: attempt %d of %d failed: %s", url, attempt, retries, reason)
        if attempt < retries:
            time.sleep(wait * attempt)
    raise _SourceFailed(f"{retries} attempt(s) failed, the last with: {reason}")


def _fetch_once(url: str, part: Path, timeout: float) -> None:
    """Continue (or start) the transfer of `url` into `part`; raise _Cut if it stops early."""
    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "advdissect", **({"Range": f"bytes={have}-"} if have else {})}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            _settle_unsatisfiable_range(exc, part, have)
            return
        raise
    with response:
        if have and (response.status != 206 or _range_start(response) != have):
            log.info("%s: the server sent the whole file; starting again from byte 0", url)
            have = 0
        elif have:
            log.info("%s: continuing after byte %d", url, have)
        length = response.headers.get("Content-Length")
        total = have + int(length) if length else None
        with open(part, "ab" if have else "wb") as out:
            with tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=part.name, disable=None) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            size = out.tell()
    if total is not None and size < total:
        raise _Cut(f"stopped after {size} of {total} bytes")


def _range_start(response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _settle_unsatisfiable_range(exc: urllib.error.HTTPError, part: Path, have: int) -> None:
    """A 416 answer to `Range: bytes=<have>-`: the part is whole when the server's size equals it;
    otherwise it is not this file's start, and the transfer starts again from zero."""
    match = re.match(r"bytes \*/(\d+)", exc.headers.get("Content-Range", "") if exc.headers else "")
    if match and int(match.group(1)) == have:
        return
    part.unlink()
    raise _Cut(f"the server cannot continue after byte {have}; starting again from zero")


def _checked_digest(part: Path, dest: Path, pinned: str | None) -> str:
    """The sha256 of a complete download, after checking it against the pinned digest and the one
    recorded beside `dest`; a file that matches neither is set aside."""
    actual = sha256_of(part)
    record = sha256_record(dest)
    expected = [(pinned.lower(), "the pinned sha256", "")] if pinned else []
    if record.is_file():
        advice = f"; if the file at the source changed on purpose, delete {record.name}"
        expected.append((read_sha256_record(record), f"what {record.name} records", advice))
    for digest, source, advice in expected:
        if actual != digest:
            aside = set_aside(part, dest, actual)
            raise _SourceFailed(
                f"its sha256 is {actual}, not {source} ({digest}); refused and kept aside as {aside.name}{advice}"
            )
    return actual


def set_aside(path: Path, dest: Path, digest: str) -> Path:
    """Rename a refused download beside `dest` under a name that says so; returns the new path."""
    aside = dest.with_name(f"{dest.name}.refused-{digest[:12]}")
    os.replace(path, aside)
    return aside


# ---------------------------------------------------------------- Broden


def download_broden(
    variant: str,
    dest: str | os.PathLike,
    *,
    mirrors: Sequence[str] = (),
    sha256: str | None = None,
    retries: int = RETRIES,
    wait: float = WAIT,
    timeout: float = 60.0,
) -> Path:
    """Fetch Broden `variant` ('broden1_224' or 'broden1_227') into `dest` from BRODEN_SOURCES, then
    `mirrors`; returns `dest`. The archive's sha256 is recorded beside `dest` (`<variant>.zip.sha256`)
    once it has unpacked as a Broden dataset, and a later download is checked against it."""
    if variant not in BRODEN_SOURCES:
        raise ConfigError(f"Broden variant must be one of {', '.join(BRODEN_SOURCES)}, got {variant!r}")
    dest = Path(dest)
    if (dest / "index.csv").is_file():
        log.info("%s already holds a dataset; nothing to download", dest)
        return dest
    check_dataset_dest(dest)
    archive = dest.with_name(f"{dest.name}.zip")
    urls = [*BRODEN_SOURCES[variant], *mirrors]
    download_checked(
        urls,
        archive,
        lambda path: install_zip(path, dest),
        what="archive",
        sha256=sha256,
        retries=retries,
        wait=wait,
        timeout=timeout,
        hint=LOCAL_HINT,
    )
    archive.unlink()
    return dest


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
