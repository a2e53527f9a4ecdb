"""``imagenet``: ImageNet-style class folders, streamed through decoding worker processes.

Layout: ``<data_folder>/train/<class>/*.JPEG`` and ``<data_folder>/val/<class>/*.JPEG`` (the
``val`` folder is the test split; ``--val_split`` holds images out of ``train``), checked by
``dataset.folders`` (class indices: the sorted class-folder names, as torchvision's
``ImageFolder``). Official ImageNet ships its validation images flat; sort them into class folders
first (the layout check says so if they are not).

Why not device-resident: 1.28 M JPEGs do not fit on a GPU as pixels and need decoding, which is
CPU work, so worker processes decode them with Pillow and apply torchvision's ImageNet views,
written with torch (``dataset.transforms``): RandomResizedCrop(S) + horizontal flip for training,
Resize(S * 256 // 224) + CenterCrop(S) for evaluation, with ``S = --img_size`` (default 224:
Resize(256) + CenterCrop(224)). See ``dataset.streaming`` for how the loader keeps the loader
contract (uint8 from workers, normalised on the device, every sample's augmentation seeded from
the loader's (seed, epoch, rank) generator). Mean/std: ImageNet's usual constants.

Needs Pillow (``pip install "mtkd[vision]"``), not torchvision.
"""
from __future__ import annotations

from pathlib import Path

from .base import DataOptions, DataSpec, data_folder, register_dataset
from .decode import pillow
from .folders import FolderLayout, scan_layout
from .streaming import StreamingData
from .transforms import eval_resize_size

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SIZE = 224


def imagenet_layout(options: DataOptions) -> FolderLayout:
    return scan_layout(Path(data_folder(options)), what="ImageNet")


def streaming_note(name: str, layout: FolderLayout, size: int, how: str, stats: str, workers: int) -> str:
    """The one line a run prints about a streamed image folder."""
    who = f"{workers} decoding worker{'' if workers == 1 else 's'}" if workers else \
        "the training process (--num_workers 0)"
    return (f"data: {name} {layout.root}: {len(layout.classes)} classes, {len(layout.train)} train / "
            f"{len(layout.test)} test images, streamed from the files, decoded by {who} ({how}; "
            f"RandomResizedCrop {size} + flip, evaluation Resize {eval_resize_size(size)} + CenterCrop {size}); "
            f"{stats}")


def imagenet_spec_of(layout: FolderLayout, options: DataOptions) -> DataSpec:
    size = options.img_size or IMAGENET_SIZE
    return DataSpec("imagenet", len(layout.classes), size, 3, IMAGENET_MEAN, IMAGENET_STD,
                    len(layout.train), len(layout.test))


def imagenet_spec(options: DataOptions) -> DataSpec:
    return imagenet_spec_of(imagenet_layout(options), options)


@register_dataset("imagenet", spec=imagenet_spec, img_size=True)
def build_imagenet(options: DataOptions) -> StreamingData:
    """ImageNet-style train/ and val/ class folders, streamed (needs Pillow)."""
    pillow()
    layout = imagenet_layout(options)
    spec = imagenet_spec_of(layout, options)
    note = streaming_note("imagenet", layout, spec.image_size, "ImageNet folders always stream",
                          "ImageNet mean/std", options.num_workers)
    return StreamingData(spec, layout.classes, layout.train, layout.test, note)
