"""dataset.download with zip archives (Tiny-ImageNet's format): extraction into the folder, and
members that would land outside it, or links, refused with nothing left behind."""
from __future__ import annotations

import hashlib
import os
import zipfile

import pytest

from dataset import DataError
from dataset.download import ensure_extracted


def make_zip(path, members):
    """``members``: (name, bytes) pairs, or (name, None, external_attr) for special entries."""
    with zipfile.ZipFile(path, "w") as zf:
        for item in members:
            if len(item) == 2:
                zf.writestr(item[0], item[1])
            else:
                info = zipfile.ZipInfo(item[0])
                info.external_attr = item[2]
                zf.writestr(info, item[1] or b"")
    return hashlib.md5(path.read_bytes()).hexdigest()


def extract(tmp_path, archive, md5):
    return ensure_extracted(str(tmp_path / "data"), "pkg", ["a.txt", "sub/b.txt"], url=archive.as_uri(), md5=md5,
                            download=True, what="Test data")


def test_zip_is_extracted_into_its_folder(tmp_path):
    archive = tmp_path / "pkg.zip"
    md5 = make_zip(archive, [("pkg/a.txt", b"alpha"), ("pkg/sub/b.txt", b"beta"), ("pkg/empty/", b"")])
    target = extract(tmp_path, archive, md5)
    assert target == tmp_path / "data" / "pkg"
    assert (target / "a.txt").read_bytes() == b"alpha" and (target / "sub" / "b.txt").read_bytes() == b"beta"
    assert (target / "empty").is_dir()
    assert sorted(os.listdir(tmp_path / "data")) == ["pkg"]


@pytest.mark.parametrize("member", [("pkg/../../evil.txt", b"x"), ("/tmp/evil.txt", b"x"),
                                    ("pkg/link", b"/etc/passwd", 0o120777 << 16)])
def test_unsafe_members_are_refused_and_nothing_is_left(tmp_path, member):
    archive = tmp_path / "pkg.zip"
    md5 = make_zip(archive, [("pkg/a.txt", b"alpha"), ("pkg/sub/b.txt", b"beta"), member])
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match=r"contains an unsafe member") as e:
        extract(tmp_path, archive, md5)
    assert "\n" not in str(e.value)
    assert os.listdir(tmp_path / "data") == []
    assert not (tmp_path / "evil.txt").exists()


def test_corrupt_zip_member_is_a_one_line_error(tmp_path):
    archive = tmp_path / "pkg.zip"
    make_zip(archive, [("pkg/a.txt", b"alpha" * 100), ("pkg/sub/b.txt", b"beta")])
    data = bytearray(archive.read_bytes())
    at = data.index(b"alpha")                   # stored uncompressed: damage the member's bytes
    data[at:at + 5] = b"ALPHA"
    archive.write_bytes(bytes(data))
    md5 = hashlib.md5(bytes(data)).hexdigest()
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match=r"cannot extract .*pkg\.zip: BadZipFile: Bad CRC-32") as e:
        extract(tmp_path, archive, md5)
    assert "\n" not in str(e.value) and os.listdir(tmp_path / "data") == []
