"""Small image files for the image-data tests, written with Pillow in the real formats."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np


def picture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth colour picture with some texture ``[H, W, 3]`` uint8 (JPEG keeps it close)."""
    rng = np.random.RandomState(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    base = rng.uniform(40, 200, size=3)
    slope = rng.uniform(-1.5, 1.5, size=(2, 3))
    img = base + ys[..., None] * slope[0] * 64 / height + xs[..., None] * slope[1] * 64 / width
    img = img + rng.normal(0, 6, size=(height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_image(path: Path, pixels: np.ndarray, **save_kw) -> Path:
    """Write ``pixels`` ([H, W, 3] or [H, W]) in the format of ``path``'s suffix."""
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpeg": "JPEG", ".jpg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP"}[path.suffix.lower()]
    Image.fromarray(pixels).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}), **save_kw)
    return path


def constant(height: int, width: int, value: Tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=np.uint8), (height, width, 3)).copy()


def class_folders(root: Path, counts: Dict[str, Sequence[int]], *, size: Tuple[int, int] = (20, 24),
                  ext: str = ".png", splits: Sequence[str] = ("train", "val"), marked: bool = True) -> Path:
    """``root/<split>/<class>/<class>_<i><ext>``; ``counts[class]`` = images per split.

    ``marked``: every image is a constant colour encoding (class c, split s, index i) as
    ``(10 c + i, 100 + 50 s, 7)``, so a test can tell which file a (resized, cropped) batch holds;
    otherwise a textured picture."""
    height, width = size
    for s, split in enumerate(splits):
        for c, name in enumerate(sorted(counts)):
            for i in range(counts[name][s]):
                pixels = constant(height, width, (10 * c + i, 100 + 50 * s, 7)) if marked \
                    else picture(height, width, seed=1000 * s + 100 * c + i)
                write_image(root / split / name / f"{name}_{i}{ext}", pixels)
    return root
