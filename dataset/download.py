"""Verified, all-or-nothing download of an archive that unpacks into one folder.

The one property that matters: after any failure (network, checksum, interrupted transfer,
Ctrl-C, bad archive) the data folder holds exactly what it held before, so the next run never
mistakes a half-written folder for data. That is why

- the archive is streamed to a hidden temporary file in the data folder and its MD5 is computed
  while streaming (no second pass over 160 MB);
- it (a tar or zip archive) is extracted into a hidden temporary directory next to the target, and only the complete
  folder is renamed into place (a rename within one file system is atomic);
- every temporary file and directory is removed in a ``finally`` block, and a data folder that
  this call created is removed again if it is still empty.

If the target folder already exists, nothing is downloaded; if it exists but lacks files, that is
an error rather than a silent re-download over someone's data.

Used for the CIFAR archives (``dataset.cifar``) and for published teachers
(``scripts/fetch_teachers.py``: no checksum on record, ``md5=None``, a ``check`` of the extracted
folder instead, and its own flag name in the messages).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Optional, Sequence

from .base import DataError, one_line

CHUNK = 1 << 20


def missing_files(folder: Path, required: Sequence[str]):
    return [f for f in required if not (folder / f).is_file()]


def ensure_extracted(data_folder: str, dirname: str, required: Sequence[str], *, url: str,
                     md5: Optional[str], download: bool, what: str, archive_name: Optional[str] = None,
                     check: Optional[Callable[[Path], None]] = None,
                     folder_flag: str = "--data_folder") -> Path:
    """Return ``<data_folder>/<dirname>`` holding all ``required`` files, downloading and
    extracting ``url`` (checked against ``md5``) first if the folder is absent.

    A readable copy of the archive already lying in the data folder (torchvision keeps
    ``cifar-100-python.tar.gz`` there) is verified and extracted instead of downloading again.
    ``md5=None``: no checksum is known, nothing is compared (say so to the user). ``check(folder)``
    may refuse a freshly extracted folder (raise ``DataError``) before it is moved into place; it
    is not called for a folder that already exists. ``folder_flag`` names ``data_folder`` in
    messages.
    """
    folder = Path(data_folder).expanduser()
    target = folder / dirname
    archive_name = archive_name or url.rstrip("/").rsplit("/", 1)[-1]
    if target.exists():
        if not target.is_dir():
            raise DataError(f"{target} is not a folder; expected the {what} folder {dirname}/ "
                            f"under {folder_flag} {folder}")
        missing = missing_files(target, required)
        if missing:
            raise DataError(f"{target} exists but lacks {', '.join(missing)}; expected the {what} "
                            f"files {', '.join(required)} there (delete the folder to download "
                            f"it again)")
        return target
    local_archive = folder / archive_name
    if not download and not local_archive.is_file():
        raise DataError(f"{what} not found: {target} does not exist and downloading is disabled "
                        f"(--no-download); expected {', '.join(required)} in it "
                        f"({folder_flag} {folder})")
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder_flag} {folder} is not a folder")

    created = []
    parent = folder
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    tmp_file = tmp_dir = None
    ok = False
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"cannot create {folder_flag} {folder}: {e.strerror or e}") from None
        if local_archive.is_file():
            archive = local_archive
            got = file_md5(archive) if md5 is not None else None
            if got != md5:
                raise DataError(f"checksum mismatch for {archive}: expected md5 {md5}, got {got} "
                                f"(delete the file to download it again)")
            source = str(archive)
        else:
            try:
                fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{archive_name}.", suffix=".part")
            except OSError as e:
                raise DataError(f"cannot write into {folder_flag} {folder}: {e.strerror or e}") from None
            tmp_file = Path(tmp_name)
            print(f"{what}: downloading {url} into {folder}", file=sys.stderr, flush=True)
            with os.fdopen(fd, "wb") as out:
                got = fetch(url, out)
            if md5 is not None and got != md5:
                raise DataError(f"checksum mismatch for {url} ({what}): expected md5 {md5}, "
                                f"got {got}")
            archive, source = tmp_file, url
        tmp_dir = Path(tempfile.mkdtemp(dir=folder, prefix=f".{dirname}.", suffix=".extracting"))
        safe_extract(archive, tmp_dir, source)
        extracted = tmp_dir / dirname
        missing = missing_files(extracted, required) if extracted.is_dir() else list(required)
        if missing or not extracted.is_dir():
            absent = ", ".join(dirname + "/" + m for m in missing) or f"{dirname}/ folder"
            raise DataError(f"archive {source} has no {absent}; expected the official {what} archive")
        if check is not None:
            check(extracted)
        try:
            os.rename(extracted, target)
        except OSError:
            # Another process (e.g. another rank) finished first: accept its complete copy.
            if not (target.is_dir() and not missing_files(target, required)):
                raise
        ok = True
        verified = f"md5 {md5} verified" if md5 is not None else "no checksum on record: contents checked"
        print(f"{what}: {source} ({verified}) extracted to {target}", file=sys.stderr, flush=True)
        return target
    finally:
        if tmp_file is not None:
            tmp_file.unlink(missing_ok=True)
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        if not ok:
            for d in created:  # deepest first; only folders this call created and left empty
                try:
                    d.rmdir()
                except OSError:
                    break


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, out, timeout: float = 60.0) -> str:
    """Stream ``url`` into the open binary file ``out``; return the MD5 of what was received.

    Any transport failure (refused connection, HTTP error status, a connection closed before the
    announced ``Content-Length`` was received, a timeout) is a one-line ``DataError``."""
    h = hashlib.md5()
    received = 0
    expected = None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                h.update(chunk)
                try:
                    out.write(chunk)
                except OSError as e:
                    raise DataError(f"cannot write the download of {url} to disk: "
                                    f"{e.strerror or e}") from None
                received += len(chunk)
    except DataError:
        raise
    except urllib.error.HTTPError as e:
        raise DataError(f"network failure downloading {url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DataError(f"network failure downloading {url}: {e.reason}") from None
    except Exception as e:  # http.client.IncompleteRead, connection reset, timeout, bad URL, ...
        raise DataError(f"network failure downloading {url} after {received} bytes: "
                        f"{type(e).__name__}: {one_line(e) or 'connection closed'}") from None
    if expected is not None and received != expected:
        raise DataError(f"network failure downloading {url}: connection closed after {received} of "
                        f"{expected} bytes")
    return h.hexdigest()


def starts_like_a_zip(path: Path) -> bool:
    """A zip archive begins with a local file header. (Not ``zipfile.is_zipfile``, which looks for
    the central directory near the END: a tar whose last member is a zip file, such as a torch
    checkpoint, passes it.)"""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def safe_extract(archive: Path, dest: Path, source: str) -> None:
    """Extract a tar or zip archive, refusing members that would land outside ``dest`` or that are
    not plain files or folders (links, devices): the archive is checked by MD5, but this keeps a
    caller-supplied URL/MD5 pair from writing anywhere else."""
    if starts_like_a_zip(archive):
        safe_extract_zip(archive, dest, source)
        return
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            root = os.path.realpath(dest)
            for m in members:
                path = os.path.realpath(os.path.join(root, m.name))
                if not (m.isfile() or m.isdir()) or os.path.commonpath([root, path]) != root:
                    raise DataError(f"archive {source} contains an unsafe member {m.name!r}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # Python < 3.11.4: the members were checked above
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"cannot extract {source}: {type(e).__name__}: {one_line(e)}") from None


ZIP_SYMLINK = 0o120000
ZIP_FILE_TYPE = 0o170000


def safe_extract_zip(archive: Path, dest: Path, source: str) -> None:
    """``safe_extract`` for a zip archive: every member name must stay inside ``dest`` (no
    absolute path, drive or '..' that leaves it) and no member may be a symbolic link (zip keeps
    the Unix file type in the upper half of ``external_attr``)."""
    root = os.path.realpath(dest)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for m in members:
                path = os.path.realpath(os.path.join(root, m.filename))
                is_link = (m.external_attr >> 16) & ZIP_FILE_TYPE == ZIP_SYMLINK
                if is_link or os.path.isabs(m.filename) or "\\" in m.filename \
                        or os.path.commonpath([root, path]) != root:
                    raise DataError(f"archive {source} contains an unsafe member {m.filename!r}")
            for m in members:
                target = os.path.join(root, m.filename)
                if m.is_dir():
                    os.makedirs(target, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with zf.open(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"cannot extract {source}: {type(e).__name__}: {one_line(e)}") from None
