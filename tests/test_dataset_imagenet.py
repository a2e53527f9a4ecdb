"""--dataset imagenet: class folders of real JPEG/PNG files, streamed through decoding workers
(Pillow + dataset.transforms; no torchvision), and the class-folder checks of dataset.folders."""
from __future__ import annotations

import sys

import pytest
import torch

from dataset import DataError, build_loaders, get_spec
from dataset.imagenet import IMAGENET_MEAN, IMAGENET_STD
from image_files import class_folders, picture, write_image

pytest.importorskip("PIL.Image")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

COUNTS = {"n01": (4, 2), "n02": (3, 2), "n03": (5, 1)}      # (train, val) per class
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def pixels(x):
    """Normalised batch -> the uint8 values the workers produced."""
    return torch.round((x * STD + MEAN) * 255).long()


def loaders(root, **kw):
    args = dict(data_folder=str(root), batch_size=5, device="cpu", seed=0, num_workers=0, img_size=16)
    args.update(kw)
    return build_loaders("imagenet", **args)


def test_spec_counts_folders_and_takes_img_size(tmp_path):
    class_folders(tmp_path, COUNTS)
    spec = get_spec("imagenet", data_folder=str(tmp_path))
    assert (spec.num_classes, spec.num_train, spec.num_test, spec.image_size) == (3, 12, 5, 224)
    assert (spec.mean, spec.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert get_spec("imagenet", data_folder=str(tmp_path), img_size=96).image_size == 96


def test_loader_contract_on_decoded_files(tmp_path):
    class_folders(tmp_path, COUNTS)           # each file a constant colour (10 class + index, 100 + 50 split, 7)
    built = loaders(tmp_path, val_split=1, with_index=True)
    train, test, val = built.train, built.test, built.val
    assert (train.num_samples, val.num_samples, test.num_samples) == (9, 3, 5)
    assert len(train) == 2 and len(test) == 1
    assert not set(train.source_indices.tolist()) & set(val.source_indices.tolist())
    assert "streamed from the files, decoded by the training process (--num_workers 0)" in built.note
    assert "\n" not in built.note
    assert "RandomResizedCrop 16 + flip, evaluation Resize 18 + CenterCrop 16" in built.note
    train.set_epoch(4)
    first = list(train)
    for x, y, idx in first:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 16, 16) and y.dtype == torch.int64
        assert torch.equal(y, train.labels[idx])
        p = pixels(x)
        assert (p[:, 2] == 7).all() and (p[:, 1] == 100).all()           # train/ files, constant colour
        assert torch.equal(p[:, 0, 0, 0] // 10, y)                      # the right class's file
    assert sorted(torch.cat([b[2] for b in first]).tolist()) == list(range(9))
    train.set_epoch(4)
    again = list(train)
    assert all(torch.equal(a, b) for u, v in zip(first, again) for a, b in zip(u, v))
    xs, ys = zip(*test)
    assert torch.cat(ys).tolist() == [0, 0, 1, 1, 2]                     # in order, all of them
    assert (pixels(torch.cat(xs))[:, 1] == 150).all()                   # from val/


def test_augmentation_is_seeded_per_sample_and_independent_of_workers(tmp_path):
    class_folders(tmp_path, {"a": (6, 1), "b": (6, 1)}, size=(30, 40), ext=".JPEG", marked=False)
    epochs = []
    for workers in (0, 2):
        train = loaders(tmp_path, batch_size=4, seed=3, num_workers=workers).train
        train.set_epoch(1)
        epochs.append(list(train))
        train.set_epoch(2)
        epochs.append(list(train))
    (e1_w0, e2_w0, e1_w2, e2_w2) = epochs
    for (x0, y0), (x2, y2) in zip(e1_w0 + e2_w0, e1_w2 + e2_w2):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
    assert not torch.equal(e1_w0[0][0], e2_w0[0][0])                   # another epoch, other crops


def test_each_sample_draws_from_its_own_seed_of_the_epoch(tmp_path):
    """The documented rule: the k-th sample of the epoch's order gets the k-th number drawn from the
    loader's (seed, epoch, rank) generator as the seed of its own generator."""
    from dataset.decode import decode
    from dataset.transforms import standard_view
    class_folders(tmp_path, {"a": (4, 1), "b": (3, 1)}, size=(30, 40), marked=False)
    train = loaders(tmp_path, batch_size=3, seed=5, with_index=True).train
    files = sorted((tmp_path / "train").glob("*/*.png"))
    seen = {}
    for epoch in (1, 2):
        train.set_epoch(epoch)
        order = train.positions()
        seeds = torch.randint(0, 2 ** 62, (len(order),), generator=train.augment_generator()).tolist()
        got = torch.cat([pixels(x) for x, _, _ in train])
        assert torch.cat([i for _, _, i in train]).tolist() == order.tolist()
        for k, (pos, s) in enumerate(zip(order.tolist(), seeds)):
            expected = standard_view(decode(files[pos]), 16, torch.Generator().manual_seed(s))
            assert (got[k] - expected.long()).abs().max() <= 1          # float normalisation round trip
            seen.setdefault(pos, []).append(got[k])
    assert any(not torch.equal(a, b) for a, b in seen.values())        # a sample's crop changes with the epoch


def test_workers_leave_the_global_random_state_alone(tmp_path):
    class_folders(tmp_path, {"a": (3, 1)}, marked=False)
    torch.manual_seed(11)
    before = torch.get_rng_state()
    list(loaders(tmp_path, batch_size=2).train)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_truncated_file_stops_the_epoch_with_its_name(tmp_path):
    class_folders(tmp_path, {"a": (3, 1), "b": (3, 1)}, ext=".JPEG", marked=False)
    victim = tmp_path / "train" / "b" / "b_1.JPEG"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])
    for workers in (0, 2):
        train = loaders(tmp_path, batch_size=2, num_workers=workers).train
        with pytest.raises(DataError, match=r"cannot read image .*b_1\.JPEG \(OSError: (?i:.*truncated)") as e:
            list(train)
        assert "\n" not in str(e.value) and "Traceback" not in str(e.value)


def test_without_pillow_the_error_names_the_extra(tmp_path, monkeypatch):
    class_folders(tmp_path, COUNTS)
    monkeypatch.setitem(sys.modules, "PIL", None)                      # import PIL fails
    with pytest.raises(DataError, match=r'pip install "mtkd\[vision\]"') as e:
        loaders(tmp_path)
    assert "\n" not in str(e.value) and "torchvision" not in str(e.value)


def test_no_torchvision_is_needed(tmp_path, monkeypatch):
    class_folders(tmp_path, {"a": (2, 1)})
    monkeypatch.setitem(sys.modules, "torchvision", None)              # import torchvision fails
    x, y = next(iter(loaders(tmp_path, batch_size=2).train))
    assert x.shape == (2, 3, 16, 16)


def test_unknown_view_is_a_one_line_error(tmp_path):
    class_folders(tmp_path, {"a": (2, 1)})
    with pytest.raises(DataError, match=r"view 'strong' is not available for image files streamed"):
        loaders(tmp_path, views=("standard", "strong"))


# -- the layout checks (dataset.folders), shared with --dataset imagefolder ----------------------
def test_missing_folders(tmp_path):
    with pytest.raises(DataError, match=f"--data_folder {tmp_path / 'x'} not found"):
        loaders(tmp_path / "x")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=f"{tmp_path / 'val'} not found; expected <--data_folder>/val/<class>/<image> for ImageNet"):
        loaders(tmp_path)


def test_class_folders_must_agree(tmp_path):
    class_folders(tmp_path, COUNTS)
    write_image(tmp_path / "val" / "n09" / "a.png", picture(4, 4))
    with pytest.raises(DataError, match=r"must have the same class folders; they differ in 1 \(only in val/: n09\)"):
        get_spec("imagenet", data_folder=str(tmp_path))


def test_flat_val_folder_is_not_the_layout(tmp_path):
    class_folders(tmp_path, COUNTS, splits=("train",))
    for i in range(3):
        write_image(tmp_path / "val" / f"ILSVRC2012_val_{i:08d}.JPEG", picture(8, 8))
    with pytest.raises(DataError, match=r"val holds image files next to its class folders \(ILSVRC2012_val_00000000"
                                        r".*expected only one folder per class"):
        get_spec("imagenet", data_folder=str(tmp_path))


def test_empty_class_folder_and_non_image_files_are_named(tmp_path):
    class_folders(tmp_path, COUNTS)
    (tmp_path / "train" / "n02" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"n02/notes\.txt is not an image file by its name"):
        get_spec("imagenet", data_folder=str(tmp_path))
    (tmp_path / "train" / "n02" / "notes.txt").unlink()
    (tmp_path / "train" / "n02" / ".DS_Store").write_text("x")          # hidden files are ignored
    assert get_spec("imagenet", data_folder=str(tmp_path)).num_train == 12
    for f in (tmp_path / "val" / "n03").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"class folder .*val/n03 has no images"):
        get_spec("imagenet", data_folder=str(tmp_path))
