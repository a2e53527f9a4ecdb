"""dataset.decode: real JPEG and PNG files written with Pillow, decoded without torchvision."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from dataset import DataError
from dataset.decode import decode, decode_square, is_image_name, probe
from dataset.transforms import fit_square
from image_files import picture, write_image

Image = pytest.importorskip("PIL.Image")


def test_png_round_trip_is_exact(tmp_path):
    pixels = picture(13, 17)
    x = decode(write_image(tmp_path / "a.png", pixels))
    assert x.dtype == torch.uint8 and x.shape == (3, 13, 17) and x.is_contiguous()
    assert np.array_equal(x.permute(1, 2, 0).numpy(), pixels)


def test_jpeg_decodes_as_pillow_does_and_close_to_the_original(tmp_path):
    pixels = picture(40, 30, seed=3)
    path = write_image(tmp_path / "a.JPEG", pixels)
    x = decode(path).permute(1, 2, 0).numpy()
    assert np.array_equal(x, np.array(Image.open(path).convert("RGB")))
    assert np.abs(x.astype(int) - pixels.astype(int)).mean() < 8        # lossy, but the same picture


def test_grey_palette_and_alpha_images_become_rgb(tmp_path):
    grey = np.arange(30, dtype=np.uint8).reshape(5, 6) * 8
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    x = decode(tmp_path / "g.png")
    assert x.shape == (3, 5, 6) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert torch.equal(x[0], torch.from_numpy(grey))
    rgba = np.dstack([picture(4, 4), np.full((4, 4), 10, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    assert torch.equal(decode(tmp_path / "a.png"), torch.from_numpy(rgba[..., :3]).permute(2, 0, 1))
    Image.fromarray(picture(6, 5)).convert("P").save(tmp_path / "p.png")
    assert decode(tmp_path / "p.png").shape == (3, 6, 5)


def test_probe_reads_the_size_from_the_header(tmp_path):
    assert probe(write_image(tmp_path / "a.JPEG", picture(21, 34))) == (34, 21)   # (width, height)


def test_truncated_jpeg_is_found_by_decoding_and_named(tmp_path):
    path = write_image(tmp_path / "cut.JPEG", picture(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert probe(path) == (64, 64)                                # the header is intact
    with pytest.raises(DataError, match=r"cannot read image .*cut\.JPEG \(OSError: image file is truncated") as e:
        decode(path)
    assert "\n" not in str(e.value)


def test_a_file_that_is_no_image_is_named(tmp_path):
    path = tmp_path / "notes.JPEG"
    path.write_text("not an image\nat all")
    for fn in (probe, decode):
        with pytest.raises(DataError, match=r"cannot read image .*notes\.JPEG \(UnidentifiedImageError") as e:
            fn(path)
        assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=r"image file .*gone\.png not found"):
        decode(tmp_path / "gone.png")


def test_missing_pillow_names_the_extra(tmp_path, monkeypatch):
    path = write_image(tmp_path / "a.png", picture(4, 4))
    monkeypatch.setitem(sys.modules, "PIL", None)                 # import PIL fails
    with pytest.raises(DataError, match=r'needs Pillow: pip install "mtkd\[vision\]"') as e:
        decode(path)
    assert "\n" not in str(e.value)


def test_image_names():
    assert is_image_name("a.JPEG") and is_image_name("b.png") and is_image_name("c.WebP")
    assert not is_image_name("n01_boxes.txt") and not is_image_name("jpeg")


def test_decode_square_keeps_order_and_does_not_depend_on_threads(tmp_path):
    samples = []
    for i, (h, w) in enumerate([(16, 16), (20, 30), (40, 12), (16, 16), (9, 9)]):
        samples.append((str(write_image(tmp_path / f"{i}.png", picture(h, w, seed=i))), 0))
    one = decode_square(samples, 16, threads=1)
    assert one.shape == (5, 3, 16, 16) and one.dtype == torch.uint8
    assert torch.equal(one, decode_square(samples, 16, threads=3))
    for i, (path, _) in enumerate(samples):
        assert torch.equal(one[i], fit_square(decode(path), 16))
    assert torch.equal(one[0], decode(samples[0][0]))              # already 16 x 16: unchanged
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="bad.png"):
        decode_square(samples + [(str(bad), 0)], 16, threads=2)


def test_no_module_of_dataset_imports_torchvision():
    from pathlib import Path
    import dataset
    for path in Path(dataset.__file__).parent.rglob("*.py"):
        text = path.read_text()
        assert "import torchvision" not in text and "from torchvision" not in text, path
