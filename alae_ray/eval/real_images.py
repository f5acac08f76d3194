"""Real images for the metrics, from a dataset URI, as float batches in [-1, 1].

``iter_real_images(uri, resolution, split, batch)`` understands:

* a local folder of PNG/JPEG files (recursive, sorted by path; centre-cropped to a square and
  resized to ``resolution`` with PIL's Lanczos filter); if the folder has a sub-folder named
  ``split`` only that sub-folder is read;
* MNIST IDX files: a folder holding ``{split}-images-idx3-ubyte[.gz]`` (``split`` is ``t10k`` or
  ``train``; ``test`` means ``t10k``), or ``mnist:FOLDER``; 28x28 digits, resized if ``resolution``
  differs;
* a prepared (Parquet) alae-ray dataset (``alae-ray prepare``), local or ``s3://``, read level by
  level in stored order (``resolution`` must be one of its levels).

``dataset_identity`` names what was read (path, sizes, modification times) for the statistics cache.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..core.pixels import signed

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
MANIFEST_FILE = "manifest.json"  # alae_ray.data.layout.MANIFEST

def uint8_to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32 in [-1, 1] (copies: IDX arrays are read-only NumPy views)."""
    return signed(torch.tensor(np.asarray(images, dtype=np.uint8)))


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey -> RGB by repetition, RGB -> grey by ITU-R 601 luma (PIL's "L"); unchanged when they match."""
    if images.shape[1] == channels:
        return images
    if images.shape[1] == 1:
        return images.expand(-1, channels, -1, -1)
    if images.shape[1] == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
        return (images * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)
    raise ValueError(f"images have {images.shape[1]} channels, the model {channels}")


def resize_uint8(images: np.ndarray, resolution: int) -> np.ndarray:
    """Resize uint8 [N, C, H, W] to resolution x resolution (PIL Lanczos, per channel)."""
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images
    from PIL import Image

    out = np.empty((*images.shape[:2], resolution, resolution), dtype=np.uint8)
    for i, img in enumerate(images):
        for c, plane in enumerate(img):
            out[i, c] = np.asarray(Image.fromarray(plane).resize((resolution, resolution), Image.LANCZOS))
    return out


def load_image_file(path: Path, resolution: int, channels: int | None = None) -> np.ndarray:
    """One image file as uint8 [C, R, R]: centre square crop, Lanczos resize; grey stays 1 channel."""
    from PIL import Image

    with Image.open(path) as im:
        grey = im.mode in ("L", "I;16", "1") if channels is None else channels == 1
        im = im.convert("L" if grey else "RGB")
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        if s != resolution:
            im = im.resize((resolution, resolution), Image.LANCZOS)
        a = np.asarray(im)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def list_image_files(folder: Path) -> list[Path]:
    out = [Path(root) / f for root, dirs, files in os.walk(folder) for f in files
           if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(out)


def _mnist_folder(uri: str) -> Path | None:
    path = Path(uri[len("mnist:"):] if uri.startswith("mnist:") else uri)
    if path.is_dir() and any(p.name.endswith(("-images-idx3-ubyte", "-images-idx3-ubyte.gz")) for p in path.iterdir()):
        return path
    if uri.startswith("mnist:"):
        raise FileNotFoundError(f"{uri}: no MNIST IDX files (*-images-idx3-ubyte[.gz]) in {path}")
    return None


def mnist_split_name(split: str) -> str:
    return {"test": "t10k", "t10k": "t10k", "train": "train"}.get(split, split)


def _is_prepared(uri: str) -> bool:
    return uri.startswith("s3://") or (Path(uri) / MANIFEST_FILE).is_file()


def _folder_files(uri: str, split: str) -> list[Path]:
    folder = Path(uri)
    if (folder / split).is_dir():
        folder = folder / split
    files = list_image_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no PNG/JPEG images")
    return files


def iter_real_uint8(uri: str, resolution: int, split: str = "test", batch: int = 64,
                    limit: int | None = None) -> Iterator[np.ndarray]:
    """uint8 [B, C, R, R] batches of real images, in a fixed order, at most ``limit`` images."""
    limit = limit if limit is not None else np.iinfo(np.int64).max
    if _is_prepared(uri):
        from ..data.reader import iter_level_batches

        source = (b["image"] for b in iter_level_batches(uri, resolution, split, batch))
    elif (mnist := _mnist_folder(uri)) is not None:
        from ..data.idx import load_mnist

        images, _ = load_mnist(mnist, mnist_split_name(split))
        source = (images[i:i + batch, None] for i in range(0, len(images), batch))
    elif Path(uri).is_dir():
        files = _folder_files(uri, split)
        source = (np.stack([load_image_file(f, resolution) for f in files[i:i + batch]])
                  for i in range(0, len(files), batch))
    else:
        raise FileNotFoundError(f"{uri}: not an image folder, an MNIST IDX folder or a prepared dataset")
    seen = 0
    for chunk in source:
        chunk = chunk[:limit - seen]
        if len(chunk):
            yield resize_uint8(chunk, resolution)
            seen += len(chunk)
        if seen >= limit:
            return


def iter_real_images(uri: str, resolution: int, split: str = "test", batch: int = 64,
                     limit: int | None = None) -> Iterator[torch.Tensor]:
    """Float [B, C, R, R] batches in [-1, 1] of the real images at ``uri`` (see module docstring)."""
    for chunk in iter_real_uint8(uri, resolution, split, batch, limit):
        yield uint8_to_float(chunk)


def dataset_identity(uri: str, split: str) -> str:
    """A string that changes when the images behind ``uri``/``split`` change (cache key part)."""
    if _is_prepared(uri):
        if uri.startswith("s3://"):
            return f"prepared:{uri}:{split}"  # manifests are immutable once written
        m = Path(uri) / MANIFEST_FILE
        return f"prepared:{Path(uri).resolve()}:{split}:{hashlib.sha1(m.read_bytes()).hexdigest()}"
    if (mnist := _mnist_folder(uri)) is not None:
        name = mnist_split_name(split)
        files = sorted(p for p in mnist.iterdir() if p.name.startswith(f"{name}-images-idx3-ubyte"))
        return f"mnist:{mnist.resolve()}:{name}:" + ",".join(f"{p.name}:{p.stat().st_size}" for p in files)
    files = _folder_files(uri, split)
    h = hashlib.sha1()
    for f in files:
        st = f.stat()
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return f"folder:{Path(uri).resolve()}:{split}:{len(files)}:{h.hexdigest()}"
