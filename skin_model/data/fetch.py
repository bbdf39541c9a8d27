"""Download the official HAM10000 release from Harvard Dataverse (doi:10.7910/DVN/DBW86T).

    >>> fetch_ham10000("~/data/ham10000")   # then load_ham10000("~/data/ham10000")

Standard library only (urllib): the file list comes from the Dataverse native API
(``GET {base}/api/datasets/:persistentId/?persistentId=doi:...``), each file from
``{base}/api/access/datafile/{id}`` with a tqdm progress bar. Downloads go to
``DEST/downloads/NAME.part`` and resume with an HTTP Range request when a previous
run was interrupted; the checksum the API gives (MD5 for this dataset) is checked
before a file is used, and a mismatch deletes it. The metadata is written as
``DEST/HAM10000_metadata.csv`` (converted from tab-separated when Dataverse serves
its ingested ``.tab``; the original upload is requested when the API lists one),
and each image archive is unpacked into ``DEST/HAM10000_images_part_1/`` and
``_2/`` through a hidden temporary folder renamed on success, so an interrupted or
failed unpack never leaves a half-filled image folder. Archives are deleted after
unpacking unless `keep_archives`. Running again skips whatever is already done.

The data are licensed CC BY-NC 4.0 (non-commercial use, with attribution: Tschandl
P., Rosendahl C., Kittler H., Sci. Data 5, 180161 (2018)).
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import io
import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from skin_model.constants import METADATA_FILE, VERSION

DATAVERSE_URL = "https://dataverse.harvard.edu"
DOI = "doi:10.7910/DVN/DBW86T"
METADATA_NAMES = ("HAM10000_metadata.tab", "HAM10000_metadata.csv", "HAM10000_metadata")
IMAGE_ARCHIVES = ("HAM10000_images_part_1.zip", "HAM10000_images_part_2.zip")
MASK_ARCHIVE = "HAM10000_segmentations_lesion_tschandl.zip"
DOWNLOADS = "downloads"
CHUNK = 1 << 20
TIMEOUT = 60.0


class FetchError(RuntimeError):
    """The download or unpacking failed; the message says why and what to do."""


class Interrupted(FetchError):
    """The connection dropped mid-file; the partial download is kept for resuming."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of the dataset as the Dataverse API lists it."""

    id: int
    filename: str
    size: int | None
    checksum_type: str | None
    checksum: str | None
    original: bool = False  # download the original upload (?format=original) of an ingested table

    def url(self, base_url: str) -> str:
        url = f"{base_url.rstrip('/')}/api/access/datafile/{self.id}"
        return url + "?format=original" if self.original else url


def _user_agent() -> str:
    return f"skin-model/{VERSION} (python-urllib)"


def _open(url: str, headers: dict[str, str] | None = None, timeout: float = TIMEOUT) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": _user_agent(), **(headers or {})})
    return urllib.request.urlopen(request, timeout=timeout)


def list_files(base_url: str = DATAVERSE_URL, doi: str = DOI, timeout: float = TIMEOUT) -> dict[str, RemoteFile]:
    """The dataset's files by name (both the served and, for ingested tables, the original name)."""
    url = (f"{base_url.rstrip('/')}/api/datasets/:persistentId/?"
           + urllib.parse.urlencode({"persistentId": doi}))
    try:
        with _open(url, {"Accept": "application/json"}, timeout) as resp:
            payload = json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        raise FetchError(f"the Dataverse API refused to list {doi}: HTTP {exc.code} {exc.reason} ({url})") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"cannot reach Dataverse at {base_url} ({reason})") from None
    except ValueError:
        raise FetchError(f"the Dataverse API did not answer with JSON ({url})") from None
    try:
        entries = payload["data"]["latestVersion"]["files"]
    except (KeyError, TypeError):
        raise FetchError(f"unexpected answer from the Dataverse API (no data.latestVersion.files) at {url}") from None
    files: dict[str, RemoteFile] = {}
    for entry in entries:
        df = entry.get("dataFile") or {}
        if "id" not in df:
            continue
        checksum = df.get("checksum") or {}
        ctype, cvalue = checksum.get("type"), checksum.get("value")
        if not cvalue and df.get("md5"):
            ctype, cvalue = "MD5", df["md5"]
        name = df.get("filename") or entry.get("label")
        original = bool(df.get("originalFileFormat") and df.get("originalFileName"))
        served = RemoteFile(id=int(df["id"]), filename=name, size=df.get("filesize"), checksum_type=ctype,
                            checksum=cvalue, original=False)
        if original:
            # Dataverse keeps the checksum of the uploaded original; the .tab it serves is derived from it.
            orig = RemoteFile(id=int(df["id"]), filename=df["originalFileName"], size=df.get("originalFileSize"),
                              checksum_type=ctype, checksum=cvalue, original=True)
            files[orig.filename] = orig
            files[name] = orig
        else:
            files[name] = served
    return files


def _hasher(checksum_type: str | None) -> Any:
    if not checksum_type:
        return None
    name = checksum_type.lower().replace("-", "")
    try:
        return hashlib.new(name)
    except ValueError:
        return None


def _digest(path: Path, checksum_type: str | None) -> str | None:
    hasher = _hasher(checksum_type)
    if hasher is None:
        return None
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def _check_space(folder: Path, needed: int, label: str) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise FetchError(f"{label}: not enough disk space in {folder} "
                         f"(needs about {needed / 1e9:.1f} GB, {free / 1e9:.1f} GB free)")


def download(remote: RemoteFile, base_url: str, target: Path, progress: bool = True,
             timeout: float = TIMEOUT) -> Path:
    """Download one file to `target` (resuming `target.part`), verify its checksum, return `target`."""
    label = remote.filename
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file():
        actual = _digest(target, remote.checksum_type)
        if remote.checksum is None or actual is None or actual == remote.checksum.lower():
            return target
        target.unlink()  # an earlier, different file: fetch it again
    have = part.stat().st_size if part.is_file() else 0
    if remote.size is not None and have > remote.size:
        part.unlink()
        have = 0
    if remote.size is None or have < remote.size:
        if remote.size is not None:
            _check_space(target.parent, remote.size - have, label)
        _fetch_into(remote, base_url, part, have, progress, timeout)
    got = part.stat().st_size
    if remote.size is not None and got != remote.size:
        raise Interrupted(f"{label}: the download stopped at {got} of {remote.size} bytes; "
                          f"run the command again to resume it")
    actual = _digest(part, remote.checksum_type)
    if remote.checksum and actual is not None and actual != remote.checksum.lower():
        part.unlink()
        raise FetchError(f"{label}: checksum mismatch ({remote.checksum_type} expected {remote.checksum.lower()}, "
                         f"got {actual}); the corrupt download was deleted, run the command again to fetch it afresh")
    part.replace(target)
    return target


def _fetch_into(remote: RemoteFile, base_url: str, part: Path, have: int, progress: bool, timeout: float) -> None:
    label, url = remote.filename, remote.url(base_url)
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        resp = _open(url, headers, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the partial file is complete
            return
        raise FetchError(f"{label}: HTTP {exc.code} {exc.reason} from {url}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise Interrupted(f"{label}: cannot download from {url} ({getattr(exc, 'reason', exc)}); "
                          f"run the command again to resume") from None
    with resp:
        if have and resp.status != 206:
            have = 0  # the server ignored the Range request: start over
        elif have:
            content_range = resp.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {have}-"):
                raise FetchError(f"{label}: the server resumed at the wrong place ({content_range!r}); "
                                 f"delete {part} and run again")
        length = resp.headers.get("Content-Length")
        total = remote.size or (have + int(length) if length and length.isdigit() else None)
        written = have
        with open(part, "ab" if have else "wb") as fh, \
                tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                     disable=not progress, leave=False) as bar:
            try:
                while chunk := resp.read(CHUNK):
                    fh.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:
                raise Interrupted(f"{label}: the download was interrupted after {written} bytes "
                                  f"({type(exc).__name__}); run the command again to resume it") from None
        if getattr(resp, "length", None):  # the body ended before its Content-Length
            raise Interrupted(f"{label}: the connection closed after {written} bytes; "
                              f"run the command again to resume it")


def unpack(archive: Path, target: Path) -> int:
    """Extract every file of a zip flat into `target` (created atomically); returns the file count."""
    tmp = target.with_name(f".{target.name}.unpacking")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    count = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            _check_space(target.parent, sum(i.file_size for i in zf.infolist()), archive.name)
            for info in zf.infolist():
                name = PurePosixPath(info.filename.replace("\\", "/")).name  # flat: no path ever leaves tmp
                if info.is_dir() or not name or name.startswith(".") or "__MACOSX" in info.filename:
                    continue
                with zf.open(info) as src, open(tmp / name, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                count += 1
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, FetchError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, FetchError):
            raise
        raise FetchError(f"{archive.name}: cannot unpack ({exc}); delete it and run the command again") from None
    if count == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FetchError(f"{archive.name}: the archive is empty")
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return count


def write_metadata_csv(source: Path, target: Path) -> Path:
    """Copy the metadata to `target` as comma-separated CSV (converting tab-separated input)."""
    text = source.read_text(encoding="utf-8-sig")
    header = text.split("\n", 1)[0]
    tmp = target.with_name(target.name + ".tmp")
    if "\t" in header and header.count("\t") >= header.count(","):
        rows = csv.reader(io.StringIO(text), delimiter="\t")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(rows)
    else:
        tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
    return target


def _find(files: dict[str, RemoteFile], names: tuple[str, ...], what: str) -> RemoteFile:
    for name in names:
        if name in files:
            return files[name]
    raise FetchError(f"the dataset lists no {what} (looked for {', '.join(names)}; "
                     f"it has {', '.join(sorted(files)) or 'no files'})")


def _with_retries(func: Any, retries: int, *args: Any, **kwargs: Any) -> Any:
    for attempt in range(retries + 1):
        try:
            return func(*args, **kwargs)
        except Interrupted:
            if attempt == retries:
                raise
            time.sleep(min(30.0, 2.0 ** attempt))
    raise AssertionError("unreachable")


def fetch_ham10000(dest: str | os.PathLike, base_url: str = DATAVERSE_URL, doi: str = DOI, masks: bool = False,
                   keep_archives: bool = False, progress: bool = True, retries: int = 3,
                   timeout: float = TIMEOUT) -> Path:
    """Download and unpack HAM10000 into `dest` so that ``load_ham10000(dest)`` works; returns `dest`.

    Interrupted downloads are retried `retries` times (resuming), then left in
    ``dest/downloads/*.part`` for the next call to resume.
    """
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    downloads = dest / DOWNLOADS
    files = list_files(base_url, doi, timeout)

    meta = _find(files, METADATA_NAMES, "metadata file")
    meta_file = _with_retries(download, retries, meta, base_url, downloads / meta.filename, progress, timeout)
    write_metadata_csv(meta_file, dest / METADATA_FILE)

    archives = list(IMAGE_ARCHIVES) + ([MASK_ARCHIVE] if masks else [])
    for name in archives:
        folder = dest / name.removesuffix(".zip")
        if folder.is_dir() and any(folder.iterdir()):
            continue  # unpacked by an earlier run (folders appear only once complete)
        remote = _find(files, (name,), name)
        archive = _with_retries(download, retries, remote, base_url, downloads / name, progress, timeout)
        unpack(archive, folder)
        if not keep_archives:
            archive.unlink()
    if downloads.is_dir() and not any(downloads.iterdir()):
        downloads.rmdir()
    return dest
