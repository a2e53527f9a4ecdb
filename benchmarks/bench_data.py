"""Images per second of the device-resident pipelines vs. a conventional DataLoader pipeline.

Both deliver the same thing to the training step -- normalised float32 batches of randomly
cropped (4-pixel zero padding) and flipped images, and int64 labels, on ``--device`` -- from the
same uint8 data:

(a) ``dataset.DeviceLoader``: data on the device, one batched gather per batch (no workers);
(b) the RepDistiller way without torchvision: a ``torch.utils.data.Dataset`` doing per-image numpy
    pad + crop + flip + normalise, a ``DataLoader`` with ``--num_workers`` workers (not
    persistent, so each epoch pays the worker start-up, as RepDistiller's loaders do), shuffling,
    pinned memory on CUDA, then a copy to the device.

For (b) two rates are printed: over the whole epoch, and from the first batch on (start-up
excluded). On a CPU-only machine both pipelines compete with each other for the same cores the
training would use, so the ratio there says little about a GPU run; run it on the GPU box.

    python benchmarks/bench_data.py                      # CIFAR-100-shaped synthetic data
    python benchmarks/bench_data.py --size 2000 --batches 20 --num_workers 2   # a few seconds
    python benchmarks/bench_data.py --dataset cifar100 --data_folder ./data --device cuda

``--imagefolder N`` measures the image-file path instead, on a folder it writes itself (N JPEGs
of ``--image_px`` pixels in 10 class folders, quality 90, in a temporary folder removed afterwards):

(a) ``--dataset imagefolder`` device-resident: the files decoded once (timed apart), then epochs
    of batched crop + flip on the device;
(b) ``--dataset imagefolder`` streaming (``dataset.streaming``, forced on the same folder): worker
    processes decode every file each epoch and apply RandomResizedCrop + flip with torch, uint8
    to the device, normalised there; persistent workers (its first epoch includes their start);
(c) a plain ``DataLoader`` over a ``Dataset`` that opens each file with Pillow and does a 4-pixel
    padded random crop + flip + normalisation per image in numpy/torch (the RepDistiller-style
    pipeline without torchvision), with the same number of workers, not persistent.

    python benchmarks/bench_data.py --imagefolder 2000 --image_px 64 --num_workers 2 --epochs 2
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

try:
    import dataset
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import dataset
from dataset import DataError, DeviceLoader


class NumpyCifar(torch.utils.data.Dataset):
    """Per-image augmentation in numpy, as RepDistiller's torchvision transforms do per PIL image:
    RandomCrop(32, padding=4), RandomHorizontalFlip(), ToTensor(), Normalize(mean, std)."""

    def __init__(self, images_nchw: np.ndarray, labels: np.ndarray, mean, std, pad: int = 4):
        self.data = np.ascontiguousarray(images_nchw.transpose(0, 2, 3, 1))  # HWC, as CIFAR's .data
        self.labels = labels
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.pad = pad

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        img = self.data[i]
        h, w, _ = img.shape
        p = self.pad
        padded = np.pad(img, ((p, p), (p, p), (0, 0)), mode="constant")
        top, left = np.random.randint(0, 2 * p + 1, size=2)
        crop = padded[top:top + h, left:left + w]
        if np.random.rand() < 0.5:
            crop = crop[:, ::-1]
        x = (crop.astype(np.float32) / 255 - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), int(self.labels[i])


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_device(data, args, device):
    loader = DeviceLoader(data.train_images, data.train_labels, data.spec, batch_size=args.batch_size,
                          device=device, seed=0, shuffle=True, views=("standard",))
    nb = min(len(loader), args.batches or len(loader))
    it = iter(loader)                          # warm-up (kernels, allocator), not timed
    for _ in range(min(2, nb)):
        next(it)
    sync(device)
    images, start = 0, time.perf_counter()
    for epoch in range(args.epochs):
        loader.set_epoch(epoch + 1)
        for i, (_, y) in enumerate(loader):
            if i >= nb:
                break
            images += len(y)
    sync(device)
    return images, time.perf_counter() - start


def run_conventional(data, args, device):
    ds = NumpyCifar(data.train_images.numpy(), data.train_labels.numpy(), data.spec.mean,
                    data.spec.std)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.num_workers,
                                         pin_memory=device.type == "cuda")
    nb = min(len(loader), args.batches or len(loader))
    blocking = device.type != "cuda"
    images, total, steady_images, steady = 0, 0.0, 0, 0.0
    for _ in range(args.epochs):
        start = time.perf_counter()
        first = None
        it = iter(loader)
        for _ in range(nb):
            x, y = next(it)
            x, y = x.to(device, non_blocking=not blocking), y.to(device, non_blocking=not blocking)
            if first is None:
                sync(device)
                first = time.perf_counter()
            else:
                steady_images += len(y)
            images += len(y)
        sync(device)
        end = time.perf_counter()
        del it                                 # worker shutdown is not timed
        total += end - start
        steady += end - first
    return images, total, steady_images, steady


# -- the image-file path (--imagefolder N) -------------------------------------------------------
FOLDER_CLASSES = 10


def write_folder(root: str, count: int, px: int, seed: int = 0) -> None:
    """``count`` training JPEGs (and a tenth as many test ones) of ``px x px`` in 10 class folders:
    smooth colour fields with noise, so JPEG decoding costs what it costs on photographs."""
    from PIL import Image
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:px, 0:px].astype(np.float32) / px
    for split, n in (("train", count), ("val", max(FOLDER_CLASSES, count // 10))):
        for i in range(n):
            c = i % FOLDER_CLASSES
            folder = os.path.join(root, split, f"class{c}")
            os.makedirs(folder, exist_ok=True)
            a, b, base = rng.uniform(-80, 80, 3), rng.uniform(-80, 80, 3), rng.uniform(60, 190, 3)
            img = base + yy[..., None] * a + xx[..., None] * b + rng.normal(0, 12, (px, px, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                os.path.join(folder, f"{i:06d}.JPEG"), quality=90)


class PillowFiles(torch.utils.data.Dataset):
    """Per image: Pillow decode, 4-pixel zero-padded random crop + flip, ToTensor + Normalize."""

    def __init__(self, samples, mean, std, pad: int = 4):
        self.samples, self.pad = samples, pad
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image
        path, label = self.samples[i]
        with Image.open(path) as im:
            img = np.asarray(im.convert("RGB"))
        h, w, _ = img.shape
        p = self.pad
        padded = np.pad(img, ((p, p), (p, p), (0, 0)), mode="constant")
        top, left = np.random.randint(0, 2 * p + 1, size=2)
        crop = padded[top:top + h, left:left + w]
        if np.random.rand() < 0.5:
            crop = crop[:, ::-1]
        x = (crop.astype(np.float32) / 255 - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), label


def time_loader(loader, args, device, set_epoch=True):
    """(images, seconds, first-epoch seconds) over ``args.epochs`` epochs of at most ``args.batches``."""
    nb = min(len(loader), args.batches or len(loader))
    images, total, first = 0, 0.0, None
    for epoch in range(args.epochs):
        if set_epoch:
            loader.set_epoch(epoch)
        start = time.perf_counter()
        it = iter(loader)
        for _ in range(nb):
            _, y = next(it)[:2]
            images += len(y)
        sync(device)
        spent = time.perf_counter() - start
        del it
        total += spent
        first = spent if first is None else first
    return images, total, first


def run_folder(args, device):
    import tempfile
    from dataset.imagefolder import load_imagefolder
    from dataset.loader import DeviceLoader
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_data_folder.") as root:
        start = time.perf_counter()
        write_folder(root, args.imagefolder, args.image_px)
        wrote = time.perf_counter() - start
        options = dataset.make_options(data_folder=root, num_workers=args.num_workers)
        start = time.perf_counter()
        data = load_imagefolder(options, pipeline="resident")
        decode_s = time.perf_counter() - start
        files = len(data.train_labels) + len(data.test_labels)
        resident = DeviceLoader(data.train_images, data.train_labels, data.spec, batch_size=args.batch_size,
                                device=device, seed=0, shuffle=True, views=("standard",))
        rows.append(("imagefolder device-resident",) + time_loader(resident, args, device))
        streamed = load_imagefolder(options, pipeline="streaming")
        streaming = streamed.make_loaders(options=options, batch_size=args.batch_size,
                                          test_batch_size=args.batch_size, device=device, seed=0,
                                          with_index=False, views=("standard",), rank=0, world_size=1).train
        rows.append((f"imagefolder streaming, {args.num_workers} workers",) + time_loader(streaming, args, device))
        del streaming
        plain = torch.utils.data.DataLoader(PillowFiles(streamed.train_samples, data.spec.mean, data.spec.std),
                                            batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers,
                                            pin_memory=device.type == "cuda")
        blocking = device.type != "cuda"

        class ToDevice:
            def __len__(self):
                return len(plain)

            def __iter__(self):
                for x, y in plain:
                    yield x.to(device, non_blocking=not blocking), y.to(device, non_blocking=not blocking)
        rows.append((f"plain DataLoader + Pillow, {args.num_workers} workers",)
                    + time_loader(ToDevice(), args, device, set_epoch=False))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs"
    print(f"device: {device} ({name})")
    print(f"data: {args.imagefolder} JPEGs of {args.image_px}x{args.image_px} px in {FOLDER_CLASSES} class folders "
          f"(written in {wrote:.1f} s); batch {args.batch_size}, {args.epochs} epoch(s)")
    print(f"device-resident: decoding all {files} files once took {decode_s:.2f} s "
          f"({files / decode_s:.0f} images/s, {max(1, args.num_workers)} threads)")
    print(f"{'pipeline':<44}{'images':>9}{'seconds':>10}{'images/s':>12}{'1st epoch s':>13}")
    for label, n, t, first in rows:
        print(f"{label:<44}{n:>9}{t:>10.3f}{n / t:>12.0f}{first:>13.3f}")
    rates = [n / t for _, n, t, _ in rows]
    print(f"ratio device-resident / plain DataLoader: {rates[0] / rates[2]:.2f}x; "
          f"streaming / plain DataLoader: {rates[1] / rates[2]:.2f}x")
    if args.json:
        print(json.dumps({"device": str(device), "folder_images": args.imagefolder, "image_px": args.image_px,
                          "resident_images_per_s": rates[0], "streaming_images_per_s": rates[1],
                          "plain_images_per_s": rates[2], "resident_decode_s": decode_s}))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="synthetic",
                   help="any CIFAR-sized data set: synthetic, digits, cifar100, cifar10 "
                        "(default: %(default)s, CIFAR-100-shaped)")
    p.add_argument("--data_folder", default="./data")
    p.add_argument("--no-download", dest="download", action="store_false")
    p.add_argument("--size", type=int, default=50000,
                   help="synthetic training images (default: %(default)s, 100 classes, 32x32)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="workers of the conventional DataLoader (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batches", type=int, default=0,
                   help="batches per epoch (default: 0 = the whole epoch)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch.set_num_threads for this process (default: 0 = torch's choice); "
                        "on a busy machine with few cores 1 avoids OpenMP stalls")
    p.add_argument("--json", action="store_true", help="also print one JSON line of results")
    p.add_argument("--imagefolder", type=int, default=0, metavar="N",
                   help="measure the image-file path instead, on N JPEGs written to a temporary folder")
    p.add_argument("--image_px", type=int, default=64, help="--imagefolder: image side (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        if args.threads < 0:
            raise DataError(f"--threads must be >= 0, got {args.threads}")
        if args.threads:
            torch.set_num_threads(args.threads)
        for flag in ("size", "batch_size", "epochs"):
            if getattr(args, flag) < 1:
                raise DataError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
        if args.num_workers < 0 or args.batches < 0:
            raise DataError("--num_workers and --batches must be >= 0")
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise DataError(f"--device {args.device}: CUDA is not available")
        if args.imagefolder < 0 or args.image_px < 8:
            raise DataError("--imagefolder must be >= 0 and --image_px >= 8")
        if args.imagefolder:
            dataset.decode.pillow()
    except DataError as e:
        p.error(str(e))
    if args.imagefolder:
        return run_folder(args, device)
    try:
        if args.dataset == "imagenet":
            raise DataError("--dataset imagenet has no device-resident pipeline to compare")
        entry = dataset.base.get_entry(args.dataset)
        data = entry.build(dataset.make_options(data_folder=args.data_folder,
                                                download=args.download,
                                                synthetic_train=args.size, synthetic_test=1))
    except DataError as e:
        p.error(str(e))

    n_dev, t_dev = run_device(data, args, device)
    n_conv, t_conv, n_steady, t_steady = run_conventional(data, args, device)
    rate_dev, rate_conv = n_dev / t_dev, n_conv / t_conv
    rate_steady = n_steady / t_steady if t_steady > 0 else float("nan")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs"
    s = data.spec
    print(f"device: {device} ({name})")
    print(f"data: {s.name}, {len(data.train_labels)} training images {s.channels}x{s.image_size}x"
          f"{s.image_size}, {s.num_classes} classes; batch {args.batch_size}, {args.epochs} epoch(s)"
          f" of {n_dev // args.epochs} images")
    rows = [("device-resident (dataset.DeviceLoader)", n_dev, t_dev, rate_dev),
            (f"conventional DataLoader, {args.num_workers} workers", n_conv, t_conv, rate_conv),
            ("  same, after its first batch", n_steady, t_steady, rate_steady)]
    print(f"{'pipeline':<44}{'images':>9}{'seconds':>10}{'images/s':>12}")
    for label, n, t, r in rows:
        print(f"{label:<44}{n:>9}{t:>10.3f}{r:>12.0f}")
    print(f"ratio device-resident / conventional: {rate_dev / rate_conv:.2f}x "
          f"({rate_dev / rate_steady:.2f}x against its steady state)")
    if args.json:
        print(json.dumps({"device": str(device), "device_images_per_s": rate_dev,
                          "conventional_images_per_s": rate_conv,
                          "conventional_steady_images_per_s": rate_steady,
                          "ratio": rate_dev / rate_conv}))


if __name__ == "__main__":
    main()
