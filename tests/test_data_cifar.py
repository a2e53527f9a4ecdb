"""CIFAR-100/CIFAR-10: reading the official python format, and the verified download.

Archives are generated here, in the exact official layout (Python-2-style pickles with bytes keys,
``cifar-100-python/{train,test,meta}``, ``cifar-10-batches-py/...``), and served from file:// URLs
or an http.server on 127.0.0.1 in a thread: no network.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import dataset
from dataset import DataError, build_loaders
from dataset.cifar import load_cifar
from local_server import ArchiveServer


# -- official-format fixtures ---------------------------------------------------------------------
def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar100(root: Path, n_train=12, n_test=6, seed=0):
    """Write cifar-100-python/{train,test,meta} under root; return the arrays written."""
    rng = np.random.RandomState(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = rng.randint(0, 256, size=(n, 3072)).astype(np.uint8)
        fine = [int(v) for v in rng.randint(0, 100, size=n)]
        _dump(folder / split, {b"filenames": [b"img_%d.png" % i for i in range(n)],
                               b"batch_label": split.encode() + b" batch 1 of 1",
                               b"fine_labels": fine, b"coarse_labels": [v // 5 for v in fine],
                               b"data": data})
        out[split] = (data, fine)
    _dump(folder / "meta", {b"fine_label_names": [b"class%d" % i for i in range(100)],
                            b"coarse_label_names": [b"super%d" % i for i in range(20)]})
    return out


def write_cifar10(root: Path, per_batch=3, n_test=4, seed=1):
    rng = np.random.RandomState(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {"train": [], "test": None}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        data = rng.randint(0, 256, size=(n, 3072)).astype(np.uint8)
        labels = [int(v) for v in rng.randint(0, 10, size=n)]
        _dump(folder / name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                              b"filenames": [b"f%d.png" % i for i in range(n)]})
        if name == "test_batch":
            out["test"] = (data, labels)
        else:
            out["train"].append((data, labels))
    _dump(folder / "batches.meta", {b"num_cases_per_batch": per_batch, b"num_vis": 3072,
                                    b"label_names": [b"c%d" % i for i in range(10)]})
    return out


def make_archive(src_root: Path, dirname: str, archive: Path) -> str:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src_root / dirname, arcname=dirname)
    return hashlib.md5(archive.read_bytes()).hexdigest()


@pytest.fixture
def archive100(tmp_path):
    src = tmp_path / "src"
    written = write_cifar100(src)
    archive = tmp_path / "cifar-100-python.tar.gz"
    md5 = make_archive(src, "cifar-100-python", archive)
    return archive, md5, written


def listing(folder: Path):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else None


# -- reading --------------------------------------------------------------------------------------
def test_read_cifar100_official_format(tmp_path):
    written = write_cifar100(tmp_path)
    data = load_cifar("cifar100", str(tmp_path), download=False, verify=False)
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape == (12, 3, 32, 32)
    assert data.train_labels.dtype == torch.int64 and data.test_images.shape == (6, 3, 32, 32)
    raw, fine = written["train"]
    # row = 1024 red, 1024 green, 1024 blue values, each 32x32 row-major
    assert np.array_equal(data.train_images[5, 1].numpy(), raw[5, 1024:2048].reshape(32, 32))
    assert data.train_labels.tolist() == fine
    assert data.test_labels.tolist() == written["test"][1]
    assert data.spec.num_classes == 100 and (data.spec.num_train, data.spec.num_test) == (12, 6)
    assert data.spec.mean == (0.5071, 0.4867, 0.4408) and data.spec.std == (0.2675, 0.2565, 0.2761)
    assert data.class_names[3] == "class3"


def test_read_cifar10_official_format(tmp_path):
    written = write_cifar10(tmp_path)
    data = load_cifar("cifar10", str(tmp_path), download=False, verify=False)
    assert data.train_images.shape == (15, 3, 32, 32) and data.test_images.shape == (4, 3, 32, 32)
    raws = np.concatenate([d for d, _ in written["train"]])
    assert np.array_equal(data.train_images.numpy().reshape(15, 3072), raws)
    assert data.train_labels.tolist() == sum((l for _, l in written["train"]), [])
    assert data.spec.num_classes == 10 and data.spec.mean == (0.4914, 0.4822, 0.4465)


def test_cifar_loaders_through_the_registry(tmp_path):
    write_cifar100(tmp_path, n_train=20, n_test=7)
    loaders = build_loaders("cifar100", data_folder=str(tmp_path), download=False, verify=False, batch_size=8,
                            device="cpu", seed=0)
    assert len(loaders.train) == 3 and len(loaders.test) == 1
    x, y = next(iter(loaders.test))
    assert x.shape == (7, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert loaders.spec.num_train == 20


def test_corrupt_pickle_is_a_one_line_error(tmp_path):
    write_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "train").write_bytes(b"\x80\x02not a pickle at all")
    with pytest.raises(DataError, match=r"corrupt CIFAR file .*train") as e:
        load_cifar("cifar100", str(tmp_path), download=False, verify=False)
    assert "\n" not in str(e.value)


def test_wrong_pickle_content_is_an_error(tmp_path):
    write_cifar10(tmp_path)
    _dump(tmp_path / "cifar-10-batches-py" / "data_batch_3", {b"data": np.zeros((2, 10), np.uint8),
                                                              b"labels": [0, 1]})
    with pytest.raises(DataError, match=r"data_batch_3.*uint8 \[N, 3072\]"):
        load_cifar("cifar10", str(tmp_path), download=False, verify=False)


def test_folder_that_lacks_files_is_an_error_even_with_download(tmp_path):
    write_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(DataError, match=r"cifar-100-python exists but lacks meta") as e:
        load_cifar("cifar100", str(tmp_path), download=True, url="file:///nonexistent")
    assert "\n" not in str(e.value)


def test_missing_data_folder_with_download_forbidden(tmp_path):
    folder = tmp_path / "nowhere"
    with pytest.raises(DataError, match=r"--no-download") as e:
        build_loaders("cifar10", data_folder=str(folder), download=False, batch_size=4,
                      device="cpu", seed=0)
    assert str(folder) in str(e.value) and "\n" not in str(e.value)
    assert not folder.exists()


# -- download -------------------------------------------------------------------------------------
def test_download_from_file_url_then_no_second_download(tmp_path, archive100):
    archive, md5, written = archive100
    data_dir = tmp_path / "data"
    data = load_cifar("cifar100", str(data_dir), url=archive.as_uri(), md5=md5)
    assert data.train_labels.tolist() == written["train"][1]
    assert listing(data_dir) == ["cifar-100-python"]          # no archive or temp file left
    archive.unlink()                                          # a second download would now fail
    again = load_cifar("cifar100", str(data_dir), url=archive.as_uri(), md5=md5)
    assert torch.equal(again.test_images, data.test_images)


def test_download_cifar10_via_build_loaders(tmp_path):
    src = tmp_path / "src"
    write_cifar10(src)
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5 = make_archive(src, "cifar-10-batches-py", archive)
    loaders = build_loaders("cifar10", data_folder=str(tmp_path / "d"), url=archive.as_uri(),
                            md5=md5, batch_size=5, device="cpu", seed=0)
    assert loaders.train.num_samples == 15 and loaders.spec.num_classes == 10


def test_archive_already_in_data_folder_is_used_without_network(tmp_path, archive100):
    archive, md5, _ = archive100
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    os.replace(archive, data_dir / "cifar-100-python.tar.gz")   # torchvision keeps it there
    data = load_cifar("cifar100", str(data_dir), download=False, md5=md5)
    assert data.train_images.shape[0] == 12


def test_checksum_mismatch_leaves_nothing_behind(tmp_path, archive100):
    archive, md5, _ = archive100
    bad = bytearray(archive.read_bytes())
    bad[len(bad) // 2] ^= 0xFF
    archive.write_bytes(bytes(bad))
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match=rf"checksum mismatch .*expected md5 {md5}, got "
                                        rf"{hashlib.md5(bytes(bad)).hexdigest()}") as e:
        load_cifar("cifar100", str(data_dir), url=archive.as_uri(), md5=md5)
    assert "\n" not in str(e.value)
    assert not data_dir.exists()                   # the folder this call created is gone again
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(DataError, match="checksum mismatch"):
        load_cifar("cifar100", str(existing), url=archive.as_uri(), md5=md5)
    assert listing(existing) == []                 # no partial folder, no temp file


def test_archive_without_the_expected_files_leaves_nothing_behind(tmp_path):
    src = tmp_path / "src"
    write_cifar100(src)
    (src / "cifar-100-python" / "meta").unlink()
    archive = tmp_path / "a.tar.gz"
    md5 = make_archive(src, "cifar-100-python", archive)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with pytest.raises(DataError, match=r"has no cifar-100-python/meta"):
        load_cifar("cifar100", str(data_dir), url=archive.as_uri(), md5=md5)
    assert listing(data_dir) == []


@pytest.fixture
def server(archive100):
    archive, md5, _ = archive100
    s = ArchiveServer(archive.read_bytes(), "cifar-100-python.tar.gz")
    s.md5 = md5
    yield s
    s.close()


def test_download_over_http_and_only_once(tmp_path, server, capsys):
    data_dir = tmp_path / "data"
    data = load_cifar("cifar100", str(data_dir), url=server.url, md5=server.md5)
    assert server.hits == 1 and data.train_images.shape == (12, 3, 32, 32)
    assert str(data_dir / "cifar-100-python") in capsys.readouterr().err  # says where it went
    load_cifar("cifar100", str(data_dir), url=server.url, md5=server.md5)
    assert server.hits == 1
    assert listing(data_dir) == ["cifar-100-python"]


@pytest.mark.parametrize("mode, pattern", [("truncate", r"network failure .*127\.0\.0\.1"),
                                           ("drop", r"network failure .*127\.0\.0\.1"),
                                           ("missing", r"network failure .*HTTP 404")])
def test_failed_download_leaves_nothing_behind(tmp_path, server, mode, pattern):
    server.mode = mode
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with pytest.raises(DataError, match=pattern) as e:
        load_cifar("cifar100", str(data_dir), url=server.url, md5=server.md5)
    assert "\n" not in str(e.value)
    assert listing(data_dir) == []
    server.mode = "ok"                               # and a retry then works
    assert load_cifar("cifar100", str(data_dir), url=server.url,
                      md5=server.md5).test_images.shape[0] == 6


def test_unreachable_server_is_a_network_error(tmp_path):
    import socket
    with socket.socket() as s:                       # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match="network failure"):
        load_cifar("cifar10", str(tmp_path / "d"), url=f"http://127.0.0.1:{port}/x.tar.gz",
                   md5="0" * 32)
    assert not (tmp_path / "d").exists()


def test_registry_builds_cifar_specs_without_files():
    assert dataset.get_spec("cifar100").num_classes == 100
    assert dataset.get_spec("cifar10").num_train == 50000


# -- reading never runs code (issue 17, class 1) ----------------------------------------------------
class _Payload:
    """Unpickling this runs ``func(*args)``: what a booby-trapped data file does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _trap(marker: Path):
    """Pickled payloads that would create ``marker`` if the unpickler ran them."""
    import builtins
    return [
        _Payload(os.system, f"touch {marker}"),
        _Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        _Payload(builtins.eval, f"open({str(marker)!r}, 'w')"),
        _Payload(Path.touch, marker),
    ]


@pytest.mark.parametrize("case", range(4))
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_booby_trapped_train_file_is_refused_and_never_runs(tmp_path, case, protocol):
    write_cifar100(tmp_path)
    marker = tmp_path / "pwned"
    payload = _trap(marker)[case]
    with open(tmp_path / "cifar-100-python" / "train", "wb") as f:   # inside an otherwise valid dict
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [0], b"x": payload}, f,
                    protocol=protocol)
    for verify in (False, True):        # refused with --no-verify too (and before, by the checksum)
        with pytest.raises(DataError, match=r"cifar-100-python/train") as e:
            load_cifar("cifar100", str(tmp_path), download=False, verify=verify)
        assert "\n" not in str(e.value)
        assert not marker.exists()


def test_booby_trapped_meta_and_cifar10_batches_are_refused(tmp_path):
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    _dump(tmp_path / "cifar-10-batches-py" / "batches.meta", {b"label_names": _trap(marker)[0]})
    with pytest.raises(DataError, match=r"batches.meta .*os|batches.meta .*posix|batches.meta .*system"):
        load_cifar("cifar10", str(tmp_path), download=False, verify=False)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_arrays_of_every_pickle_protocol_still_load(tmp_path, protocol):
    """The allowed globals cover numpy's array pickles of every protocol (and Python 2's bytes)."""
    write_cifar100(tmp_path)
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    with open(tmp_path / "cifar-100-python" / "train", "wb") as f:
        pickle.dump({b"data": data, b"fine_labels": [4, 7]}, f, protocol=protocol)
    got = load_cifar("cifar100", str(tmp_path), download=False, verify=False)
    assert np.array_equal(got.train_images.numpy().reshape(2, 3072), data)
    assert got.train_labels.tolist() == [4, 7]


def test_files_that_are_not_the_official_ones_need_no_verify(tmp_path, monkeypatch, capsys):
    write_cifar100(tmp_path)
    with pytest.raises(DataError, match=r"cifar-100-python/train is not the official CIFAR-100 file .*--no-verify") as e:
        load_cifar("cifar100", str(tmp_path), download=False)
    assert "\n" not in str(e.value)
    # files whose MD5 is the official one pass the check (here: the official list made to match)
    from dataset import cifar
    folder = tmp_path / "cifar-100-python"
    monkeypatch.setitem(cifar.OFFICIAL_FILE_MD5, "cifar100",
                        {f: cifar.file_md5(folder / f) for f in ("train", "test", "meta")})
    assert load_cifar("cifar100", str(tmp_path), download=False).train_images.shape[0] == 12
    (folder / "meta").write_bytes((folder / "meta").read_bytes() + b"\0")   # one changed byte
    with pytest.raises(DataError, match=r"meta is not the official"):
        load_cifar("cifar100", str(tmp_path), download=False)


def test_no_verify_flag_reaches_the_loader(tmp_path):
    """--no-verify on the command line is what lets a user's own CIFAR-format data load."""
    import argparse
    from dataset import add_data_arguments, loaders_from_args
    write_cifar10(tmp_path)
    parser = add_data_arguments(argparse.ArgumentParser())
    strict = parser.parse_args(["--dataset", "cifar10", "--data_folder", str(tmp_path), "--no-download"])
    with pytest.raises(DataError, match="--no-verify"):
        loaders_from_args(strict, batch_size=4, device="cpu", seed=0)
    own = parser.parse_args(["--dataset", "cifar10", "--data_folder", str(tmp_path), "--no-download", "--no-verify"])
    assert loaders_from_args(own, batch_size=4, device="cpu", seed=0).spec.num_train == 15
