"""Datasets for accuracy estimation: CIFAR-10 batches, .npz arrays, image folders, or the
offline fallback.  Everything is held in memory as uint8 (N, C, H, W); batches are made on the
fly with a seeded generator, so the same seed gives the same batches.

``--data`` forms:
* a CIFAR-10 python-batches folder (``cifar-10-batches-py``), or ``cifar10`` for the default
  cache folder: downloaded and checksummed when missing and the machine is online;
* an ``.npz`` file with ``x_train, y_train, x_test, y_test`` (e.g. the CIFAR-10 subset);
* an image folder tree ``root/{train,test}/<class>/*.png|jpg`` (or ``root/<class>/*``, then a
  seeded 20% becomes the test split);
* nothing: ``$NAS_DATA`` if set, else CIFAR-10 if already in the cache folder, else the
  fallback: scikit-learn's bundled handwritten digits (1,797 real 8x8 images, 10 classes),
  upsampled to 16x16 RGB (more pixels would add compute, not information).  The run says
  which dataset it used.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CACHE = Path(os.environ.get("NAS_CACHE", Path.home() / ".cache" / "plugnas"))
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


class DataError(ValueError):
    """A --data value that cannot be read; the message says what was expected."""


@dataclass
class Dataset:
    name: str
    source: str
    x_train: np.ndarray  # uint8 (N, C, H, W)
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    classes: List[str]
    flip: bool = True  # horizontal flips are label-preserving (not for digits)
    note: str = ""

    @property
    def input_size(self) -> Tuple[int, int, int]:
        return tuple(int(v) for v in self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "train": len(self.y_train),
                "test": len(self.y_test), "input_size": list(self.input_size),
                "classes": len(self.classes), "note": self.note}


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_cifar(folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    archive = folder.parent / "cifar-10-python.tar.gz"
    if not archive.exists() or _md5(archive) != CIFAR_MD5:
        print(f"downloading CIFAR-10 to {archive} ...", flush=True)
        try:
            urllib.request.urlretrieve(CIFAR_URL, archive)
        except OSError as e:
            raise DataError(f"CIFAR-10 is not at {folder} and could not be downloaded ({e}); "
                            f"give --data an .npz or image folder instead") from None
        if _md5(archive) != CIFAR_MD5:
            archive.unlink()
            raise DataError("downloaded CIFAR-10 archive fails its MD5 checksum; try again")
    with tarfile.open(archive) as tar:
        tar.extractall(folder.parent, filter="data")
    extracted = folder.parent / "cifar-10-batches-py"
    if extracted != folder:
        extracted.rename(folder)


class _BatchUnpickler(pickle.Unpickler):
    """Reads a CIFAR-10 python batch (a dict of bytes, ints, lists and one uint8 array) and
    nothing else: any other global a pickle asks for is refused, so a crafted batch cannot run
    code.  (The MD5 covers the downloaded archive only, not a folder given with --data.)"""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"),
               ("_codecs", "encode")}  # Python 3's protocol-2 spelling of bytes; encodes, nothing else

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR-10 batch never holds")
        return super().find_class(module, name)


def read_cifar_batch(f: Path):
    """(images N x 3 x 32 x 32 uint8, labels) of one python batch file, without running its code."""
    try:
        with open(f, "rb") as fh:
            d = _BatchUnpickler(fh, encoding="bytes").load()
        x = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[b"labels"], np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise DataError(f"{f} is not a CIFAR-10 python batch: {e}") from None
    if len(x) != len(y):
        raise DataError(f"{f}: {len(x)} images but {len(y)} labels")
    return x, y


def load_cifar10(folder: Path, download: bool = True) -> Dataset:
    files = [folder / f"data_batch_{i}" for i in range(1, 6)] + [folder / "test_batch"]
    if not all(f.exists() for f in files):
        if not download:
            raise DataError(f"{folder} holds no CIFAR-10 python batches")
        _download_cifar(folder)

    tr = [read_cifar_batch(f) for f in files[:5]]
    xt, yt = read_cifar_batch(files[5])
    return Dataset("cifar10", str(folder), np.concatenate([a for a, _ in tr]), np.concatenate([b for _, b in tr]),
                   xt, yt, list(CIFAR_CLASSES))


def _chw(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"{where}: images must be (N, C, H, W) or (N, H, W, C), got shape {x.shape}")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise DataError(f"{where}: images must be numbers, got dtype {x.dtype}")
        bad = ~np.isfinite(x) if np.issubdtype(x.dtype, np.floating) else None
        if bad is not None and bad.any():  # one NaN made the [0, 1] test false and every image black
            raise DataError(f"{where}: {int(bad.sum())} pixel(s) are NaN or infinite (first in image "
                            f"{int(np.argwhere(bad)[0][0])})")
        x = np.clip(x * (255.0 if x.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(x)


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    """Integer labels 0..n-1: float labels must be whole numbers, never silently truncated."""
    y = np.asarray(y).ravel()
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            raise DataError(f"{where}: labels must be whole numbers, got e.g. {y[~np.isfinite(y) | (y != np.round(y))][0]!r}")
    elif not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise DataError(f"{where}: labels must be >= 0, got {int(y.min())}")
    return y


def load_npz(path: Path) -> Dataset:
    import zipfile
    import zlib

    if not zipfile.is_zipfile(path):  # np.load would try to unpickle it, and say so confusingly
        raise DataError(f"cannot read {path} as .npz: not a zip archive (truncated, or another format)")
    try:
        z = np.load(path, allow_pickle=False)
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
        arrays = {} if missing else {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        names = z["classes"] if "classes" in z.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"cannot read {path} as .npz (truncated or corrupt?): {first}") from None
    if missing:
        raise DataError(f"{path} lacks arrays {missing} (needs x_train, y_train, x_test, y_test)")
    xtr, xte = _chw(arrays["x_train"], str(path)), _chw(arrays["x_test"], str(path))
    ytr, yte = _labels(arrays["y_train"], f"{path} y_train"), _labels(arrays["y_test"], f"{path} y_test")
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise DataError(f"{path}: image and label counts differ")
    if not len(ytr) or not len(yte):
        raise DataError(f"{path}: the train and test splits each need at least one image")
    n = int(max(ytr.max(), yte.max())) + 1
    classes = [str(c) for c in names] if names is not None else [str(i) for i in range(n)]
    if n > len(classes):
        raise DataError(f"{path}: label {n - 1} but only {len(classes)} class names")
    if len(np.unique(ytr)) < 2:
        raise DataError(f"{path}: the training labels hold {len(np.unique(ytr))} class; classification needs two or more")
    return Dataset(path.stem, str(path), xtr, ytr, xte, yte, classes)


def load_image_folder(root: Path, seed: int = 0, size: Optional[int] = None) -> Dataset:
    from PIL import Image  # matplotlib's dependency; only needed for this form

    def scan(d: Path):
        classes = sorted(p.name for p in d.iterdir() if p.is_dir())
        items = [(f, i) for i, c in enumerate(classes) for f in sorted((d / c).rglob("*"))
                 if f.suffix.lower() in IMAGE_EXT]
        return classes, items

    def read(items, side):
        xs = []
        for f, _ in items:
            try:
                im = Image.open(f).convert("RGB")
            except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
                raise DataError(f"cannot read image {f}: {(str(e).splitlines() or [''])[0]}") from None
            if im.size != (side, side):
                im = im.resize((side, side), Image.BILINEAR)
            xs.append(np.asarray(im, np.uint8).transpose(2, 0, 1))
        return np.stack(xs), np.array([c for _, c in items], np.int64)

    if (root / "train").is_dir():
        classes, train = scan(root / "train")
        test_dir = root / "test" if (root / "test").is_dir() else root / "val"
        if not test_dir.is_dir():
            raise DataError(f"{root} has train/ but no test/ or val/ folder")
        _, test = scan(test_dir)
    else:
        classes, items = scan(root)
        order = np.random.default_rng(seed).permutation(len(items))
        cut = len(items) // 5
        test, train = [items[i] for i in order[:cut]], [items[i] for i in order[cut:]]
    if not train or not test or len(classes) < 2:
        raise DataError(f"{root}: expected class subfolders of images (root/<class>/*.png or "
                        f"root/train/<class>/...), found {len(classes)} classes, {len(train)} images")
    try:
        side = size or Image.open(train[0][0]).size[0]
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read image {train[0][0]}: {(str(e).splitlines() or [''])[0]}") from None
    xtr, ytr = read(train, side)
    xte, yte = read(test, side)
    return Dataset(root.name, str(root), xtr, ytr, xte, yte, classes)


def load_digits_fallback(seed: int = 0, size: int = 16) -> Dataset:
    from sklearn.datasets import load_digits  # ships its data inside the wheel: works offline

    d = load_digits()
    img = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]  # (N,1,8,8) in [0,1]
    img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
    x = (img.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).numpy()
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = len(y) // 5
    te, tr = order[:cut], order[cut:]
    return Dataset("digits", "scikit-learn load_digits() (bundled with scikit-learn)", x[tr], y[tr], x[te], y[te],
                   [str(i) for i in range(10)], flip=False,
                   note=f"offline fallback: 1,797 real 8x8 handwritten digits upsampled to {size}x{size} RGB; "
                        "set --data or $NAS_DATA for CIFAR-10")


def load_dataset(spec: Optional[str], seed: int = 0, download: bool = True) -> Dataset:
    """Resolve ``--data`` (see the module docstring) to an in-memory Dataset."""
    spec = spec or os.environ.get("NAS_DATA") or None
    if spec is None:
        cached = CACHE / "cifar-10-batches-py"
        if (cached / "test_batch").exists():
            return load_cifar10(cached, download=False)
        return load_digits_fallback(seed)
    if spec.lower() in ("digits", "fallback"):
        return load_digits_fallback(seed)
    if spec.lower() in ("cifar10", "cifar-10"):
        return load_cifar10(CACHE / "cifar-10-batches-py", download=download)
    p = Path(spec).expanduser()
    if p.suffix == ".npz":
        if not p.exists():
            raise DataError(f"no such file: {p}")
        return load_npz(p)
    if p.name == "cifar-10-batches-py" or (p / "data_batch_1").exists():
        return load_cifar10(p, download=download)
    if p.is_dir():
        return load_image_folder(p, seed)
    raise DataError(f"cannot use --data {spec!r}: not an .npz file, a CIFAR-10 batches folder or an "
                    f"image folder (or 'cifar10' / 'digits')")


# -- splits and batches ------------------------------------------------------------------

def split_validation(n: int, fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): a seeded split of the training data."""
    if not 0 < fraction < 1:
        raise ValueError("validation fraction must be in (0, 1)")
    order = np.random.default_rng(seed + 1).permutation(n)
    cut = max(1, int(round(n * fraction)))
    return np.sort(order[cut:]), np.sort(order[:cut])


@dataclass
class Batches:
    """Normalised float batches from uint8 images, optionally augmented (pad-crop, flip)."""

    x: torch.Tensor  # uint8 (N, C, H, W)
    y: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    batch_size: int
    shuffle: bool = False
    augment: bool = False
    flip: bool = True
    seed: int = 0
    limit: Optional[int] = None  # at most this many batches per pass
    _epoch: int = field(default=0, init=False)

    def fresh(self, seed: int = 0) -> "Batches":
        """The same batches from their first epoch, shuffled and augmented for ``seed``: every
        training takes its own, so a result never depends on what iterated the batches before."""
        return dataclasses.replace(self, seed=self.seed + 7919 * seed)

    def __len__(self) -> int:
        n = (len(self.y) + self.batch_size - 1) // self.batch_size
        return min(n, self.limit) if self.limit else n

    def _prep(self, xb: torch.Tensor, g: Optional[torch.Generator]) -> torch.Tensor:
        x = xb.float().div_(255)
        if self.augment and g is not None:
            b, c, h, w = x.shape
            pad = max(1, h // 8)
            xp = F.pad(x, (pad, pad, pad, pad))
            offs = torch.randint(0, 2 * pad + 1, (b, 2), generator=g)
            x = torch.stack([xp[i, :, o[0]:o[0] + h, o[1]:o[1] + w] for i, o in enumerate(offs.tolist())])
            if self.flip:
                flip = torch.rand(b, generator=g) < 0.5
                x[flip] = x[flip].flip(-1)
        return (x - self.mean[:, None, None]) / self.std[:, None, None]

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 1000 + self._epoch)
        self._epoch += 1
        idx = torch.randperm(len(self.y), generator=g) if self.shuffle else torch.arange(len(self.y))
        for k in range(len(self)):
            sel = idx[k * self.batch_size:(k + 1) * self.batch_size]
            yield self._prep(self.x[sel], g), self.y[sel]


def channel_stats(x: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
    xf = torch.from_numpy(x).float().div_(255)
    mean = xf.mean(dim=(0, 2, 3))
    std = xf.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean, std


@dataclass
class Splits:
    """Train (supernet weights), validation (architecture ranking), test (final report only)."""

    train: Batches
    val: Batches
    test: Batches
    calib: Batches  # fixed training batches for batch-norm recalibration

    @classmethod
    def make(cls, ds: Dataset, batch_size: int, val_fraction: float, seed: int,
             calib_batches: int, eval_batch_size: int = 256) -> "Splits":
        tr, va = split_validation(len(ds.y_train), val_fraction, seed)
        cal = np.sort(np.random.default_rng(seed + 7).permutation(tr)[:calib_batches * batch_size])
        mean, std = channel_stats(ds.x_train[tr])
        X, Y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
        common = dict(mean=mean, std=std, flip=ds.flip, seed=seed)
        return cls(
            train=Batches(X[tr], Y[tr], batch_size=batch_size, shuffle=True, augment=True, **common),
            val=Batches(X[va], Y[va], batch_size=eval_batch_size, **common),
            test=Batches(torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test), batch_size=eval_batch_size, **common),
            # the same fixed batches for every candidate, so scores compare like with like
            calib=Batches(X[cal], Y[cal], batch_size=batch_size, **common),
        )
