"""Real images for checks and calibration: bundled sample photos, image folders, and preprocessing.

No network: ``photos`` are the sample photographs that ship inside scikit-image and scikit-learn.
Samples are crops of them at several scales and positions, ordered so that the first samples come
from different photos; ``offset`` selects a disjoint slice (calibration vs evaluation sets).
"""

from __future__ import annotations

import contextvars
import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataSourceError(ValueError):
    """A data source that is empty, unreadable or of the wrong shape (one-line message)."""


@dataclass(frozen=True)
class PreprocessSpec:
    """How images become model inputs, as a user states it: x → (x / scale − mean) / std per channel,
    channels RGB or BGR, a layout, and how the image is fitted to the input size.

    ``fit``: ``crop`` (resize the short side to size·256/224, centre-crop: ImageNet evaluation),
    ``stretch`` (resize to the input size, aspect ignored), ``letterbox`` (resize to fit, pad with ``pad``
    grey: YOLO-style detectors), placed by ``anchor`` (``center``, or ``top-left``: YOLOX and others pad
    only the bottom and right). ``interp``: the resize filter (see :data:`INTERPOLATIONS`; Pillow's
    ``bilinear`` smooths when it shrinks, OpenCV's ``cv2-linear`` does not, and the difference is what a
    model trained on one sees as noise from the other). ``layout`` None: told from the input shape."""

    preset: str = "imagenet"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    scale: float = 255.0
    bgr: bool = False
    fit: str = "crop"
    layout: str | None = None
    pad: int = 114
    anchor: str = "center"
    interp: str = "bilinear"

    def describe(self) -> str:
        parts = [self.preset] if self.preset != "custom" else [
            f"mean {','.join(f'{m:g}' for m in self.mean)}, std {','.join(f'{s:g}' for s in self.std)}"]
        if self.scale != 255.0:
            parts.append(f"/{self.scale:g}")
        parts.append(self.fit)
        if self.bgr:
            parts.append("BGR")
        if self.layout:
            parts.append(self.layout)
        if self.fit == "letterbox" and (self.pad, self.anchor) != (114, "center"):
            parts.append(f"pad {self.pad} {self.anchor}")
        if self.interp != "bilinear":
            parts.append(self.interp)
        return " ".join(parts)

    def to_json(self) -> str:
        return json.dumps({"preset": self.preset, "mean": list(self.mean), "std": list(self.std),
                           "scale": self.scale, "bgr": self.bgr, "fit": self.fit, "layout": self.layout,
                           "pad": self.pad, "anchor": self.anchor, "interp": self.interp})

    @classmethod
    def from_json(cls, text: str) -> PreprocessSpec:
        """Older files lack pad/anchor/interp: they meant grey 114, centred, Pillow's bilinear."""
        d = json.loads(text)
        return cls(d.get("preset", "custom"), tuple(d["mean"]), tuple(d["std"]), float(d.get("scale", 255.0)),
                   bool(d.get("bgr", False)), d.get("fit", "crop"), d.get("layout"), int(d.get("pad", 114)),
                   d.get("anchor", "center"), d.get("interp", "bilinear"))


PREPROCESS_PRESETS = {
    "imagenet": PreprocessSpec("imagenet"),
    "unit": PreprocessSpec("unit", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # x / 255 (detectors)
    "symmetric": PreprocessSpec("symmetric", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # (x/255 − 0.5) / 0.5 (Paddle)
}
FITS = ("crop", "stretch", "letterbox")
ANCHORS = ("center", "top-left")
# Pillow's filters (bilinear, bicubic and lanczos smooth over the source pixels a shrinking output pixel
# covers; area is Pillow's box filter, which is OpenCV's INTER_AREA when shrinking) and OpenCV's
# INTER_LINEAR / INTER_NEAREST (cv2-linear: 2×2 taps at (x + 0.5)·s − 0.5, no smoothing; cv2-nearest: floor(x·s)).
INTERPOLATIONS = ("bilinear", "bicubic", "lanczos", "nearest", "area", "cv2-linear", "cv2-nearest")
METADATA_KEY = "deploy.preprocess"

# The preprocessing in force for this command: set once by the CLI (flags, else the artifact's stored
# metadata), read wherever images are decoded and where an ONNX file is written (its metadata).
_current: contextvars.ContextVar[PreprocessSpec | None] = contextvars.ContextVar("deploy_preprocess", default=None)


def set_preprocess(spec: PreprocessSpec | None) -> None:
    _current.set(spec)


def current_preprocess() -> PreprocessSpec | None:
    return _current.get()


def make_preprocess_spec(preset: str | None = None, mean: Sequence[float] | None = None,
                         std: Sequence[float] | None = None, scale: float | None = None, bgr: bool | None = None,
                         fit: str | None = None, layout: str | None = None, pad: int | None = None,
                         anchor: str | None = None, interp: str | None = None) -> PreprocessSpec | None:
    """The spec the flags describe (None when no flag was given): a preset, then each flag over it."""
    if all(v is None for v in (preset, mean, std, scale, bgr, fit, layout, pad, anchor, interp)):
        return None
    if pad is not None and not 0 <= pad <= 255:
        raise DataSourceError(f"--pad {pad}: give the grey level letterbox pads with, 0 to 255 (YOLO: 114)")
    if anchor is not None and anchor not in ANCHORS:
        raise DataSourceError(f"--anchor {anchor}: choose from {', '.join(ANCHORS)}")
    if interp is not None and interp not in INTERPOLATIONS:
        raise DataSourceError(f"--interp {interp}: choose from {', '.join(INTERPOLATIONS)}")
    if preset is not None and preset not in PREPROCESS_PRESETS:
        raise DataSourceError(f"--preprocess {preset}: choose from {', '.join(PREPROCESS_PRESETS)}")
    spec = PREPROCESS_PRESETS[preset or "imagenet"]
    if fit is not None and fit not in FITS:
        raise DataSourceError(f"--resize {fit}: choose from {', '.join(FITS)}")
    if layout is not None and layout.upper() not in ("NCHW", "NHWC"):
        raise DataSourceError(f"--layout {layout}: choose NCHW or NHWC")
    for name, values in (("--mean", mean), ("--std", std)):
        if values is not None and len(values) not in (1, 3):
            raise DataSourceError(f"{name}: give 1 or 3 values, e.g. {name} 0.5,0.5,0.5")
    if std is not None and any(v == 0 for v in std):
        raise DataSourceError("--std: values must not be 0")
    if scale is not None and scale <= 0:
        raise DataSourceError(f"--scale {scale}: give the divisor that maps pixels to the model's range (255, 1)")
    custom = mean is not None or std is not None
    return replace(spec, preset="custom" if custom else spec.preset,
                   mean=tuple(mean) if mean is not None else spec.mean, std=tuple(std) if std is not None else spec.std,
                   scale=scale if scale is not None else spec.scale, bgr=bool(bgr) if bgr is not None else spec.bgr,
                   fit=fit or spec.fit, layout=layout.upper() if layout else spec.layout,
                   pad=spec.pad if pad is None else int(pad), anchor=anchor or spec.anchor,
                   interp=interp or spec.interp)


@dataclass(frozen=True)
class Preprocess:
    """ImageNet-style preprocessing: resize the short side, centre-crop, scale to [0,1], normalise.

    ``resize`` defaults to size·256/224 (the ImageNet evaluation ratio). ``channels`` 1 converts to
    grey (mean over RGB); ``order`` "BGR" swaps channels; ``layout`` "NHWC" transposes the result.
    """

    size: tuple[int, int] = (224, 224)
    resize: int | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    order: str = "RGB"
    layout: str = "NCHW"
    channels: int = 3
    fit: str = "crop"  # crop | stretch | letterbox (see PreprocessSpec)
    scale: float = 255.0
    pad: int = 114
    anchor: str = "center"
    interp: str = "bilinear"

    @classmethod
    def for_input_shape(cls, shape: Sequence[int], **overrides) -> Preprocess:
        """Preset for a model input of shape (N, C, H, W) or (N, H, W, C) with ``layout``."""
        layout = overrides.get("layout", "NCHW")
        if len(shape) != 4:
            raise DataSourceError(f"image data needs a 4-D model input, got shape {tuple(shape)}")
        c, h, w = (shape[1], shape[2], shape[3]) if layout == "NCHW" else (shape[3], shape[1], shape[2])
        if c not in (1, 3):
            raise DataSourceError(f"image data gives 1 or 3 channels, the model input has {c}")
        if c == 1:
            overrides.setdefault("mean", (0.5,))
            overrides.setdefault("std", (0.25,))
            if len(overrides["mean"]) == 3:  # a 3-channel preset on a grey input: the mean of its values
                overrides["mean"] = (float(np.mean(overrides["mean"])),)
                overrides["std"] = (float(np.mean(overrides["std"])),)
        return cls(size=(int(h), int(w)), channels=int(c), **overrides)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One PIL image → float32 array (C, H, W) or (H, W, C)."""
        h, w = self.size
        image = image.convert("RGB")
        if self.fit == "stretch":
            image = resize_image(image, (w, h), self.interp)
        elif self.fit == "letterbox":  # fit inside, pad the rest (YOLO's letterbox: grey 114, centred)
            ratio = min(w / image.width, h / image.height)
            inner = resize_image(image, (max(1, round(image.width * ratio)), max(1, round(image.height * ratio))),
                                 self.interp)
            image = Image.new("RGB", (w, h), (self.pad,) * 3)
            at = (0, 0) if self.anchor == "top-left" else ((w - inner.width) // 2, (h - inner.height) // 2)
            image.paste(inner, at)
        else:
            short = self.resize or round(min(h, w) * 256 / 224)
            scale = short / min(image.size)
            new_size = (max(w, round(image.width * scale)), max(h, round(image.height * scale)))
            image = resize_image(image, new_size, self.interp)
            left, top = (image.width - w) // 2, (image.height - h) // 2
            image = image.crop((left, top, left + w, top + h))
        x = np.asarray(image, dtype=np.float32) / np.float32(self.scale)
        if self.channels == 1:
            x = x.mean(axis=2, keepdims=True)
        elif self.order.upper() == "BGR":
            x = x[:, :, ::-1]
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1) if self.layout == "NCHW" else x, dtype=np.float32)


_PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS,
                "nearest": Image.NEAREST, "area": Image.BOX}


def resize_image(image: Image.Image, size: tuple[int, int], interp: str = "bilinear") -> Image.Image:
    """``image`` resized to ``size`` (width, height) with the filter ``interp`` (:data:`INTERPOLATIONS`)."""
    if interp in _PIL_FILTERS:
        return image.resize(size, _PIL_FILTERS[interp])
    if interp not in ("cv2-linear", "cv2-nearest"):
        raise DataSourceError(f"--interp {interp}: choose from {', '.join(INTERPOLATIONS)}")
    a = np.asarray(image, dtype=np.float32)
    (w, h), (height, width) = size, a.shape[:2]
    if interp == "cv2-nearest":  # OpenCV INTER_NEAREST: source index floor(x · in/out)
        ys = np.minimum((np.arange(h) * (height / h)).astype(np.int64), height - 1)
        xs = np.minimum((np.arange(w) * (width / w)).astype(np.int64), width - 1)
        return Image.fromarray(a[ys][:, xs].astype(np.uint8))
    # OpenCV INTER_LINEAR: source coordinate (x + 0.5) · in/out − 0.5, clamped to the image, 2×2 taps
    def taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        lo = np.floor(x).astype(np.int64)
        return lo, np.minimum(lo + 1, n_in - 1), (x - lo).astype(np.float32)

    y0, y1, fy = taps(h, height)
    x0, x1, fx = taps(w, width)
    fx = fx[None, :, None] if a.ndim == 3 else fx[None, :]
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bottom = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    fy = fy[:, None, None] if a.ndim == 3 else fy[:, None]
    out = top * (1 - fy) + bottom * fy
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _motorcycle(side: int) -> Callable[[], np.ndarray]:
    # stereo_motorcycle() returns (left, right, disparity); the disparity map holds infinities: excluded.
    def load() -> np.ndarray:
        import skimage.data

        return skimage.data.stereo_motorcycle()[side]

    return load


def _sklearn(index: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_images

        return load_sample_images().images[index]

    return load


# Natural photographs only (no synthetic test patterns); greyscale ones are expanded to RGB.
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "retina": _skimage("retina"),
    "motorcycle_left": _motorcycle(0),
    "motorcycle_right": _motorcycle(1),
    "china": _sklearn(0),
    "flower": _sklearn(1),
    "camera": _skimage("camera"),
    "moon": _skimage("moon"),
    "coins": _skimage("coins"),
    "clock": _skimage("clock"),
    "brick": _skimage("brick"),
    "grass": _skimage("grass"),
    "gravel": _skimage("gravel"),
    "text": _skimage("text"),
}

# Crop boxes as (scale of the short side, x position, y position), positions in [0, 1].
_GRID = (0.0, 0.5, 1.0)
CROPS: tuple[tuple[float, float, float], ...] = (
    ((1.0, 0.5, 0.5),)
    + tuple((0.7, x, y) for y in _GRID for x in _GRID)
    + tuple((0.45, x, y) for y in _GRID for x in _GRID)
)


def photo_names() -> list[str]:
    return list(PHOTOS)


def max_photo_samples() -> int:
    return len(PHOTOS) * len(CROPS)


@functools.cache
def _photo(name: str) -> Image.Image:
    array = PHOTOS[name]()
    if array.dtype != np.uint8:
        raise DataSourceError(f"sample photo {name} is {array.dtype}, expected uint8")
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return Image.fromarray(array[:, :, :3])


def _crop(image: Image.Image, scale: float, x: float, y: float) -> Image.Image:
    side = round(min(image.size) * scale)
    left = round((image.width - side) * x)
    top = round((image.height - side) * y)
    if scale == 1.0:  # the whole photo, as ImageNet evaluation sees it
        return image
    return image.crop((left, top, left + side, top + side))


def load_photos(
    n: int, preprocess: Preprocess | None = None, offset: int = 0, progress: Callable[[int], None] | None = None
) -> np.ndarray:
    """``n`` preprocessed crops of the bundled photos, starting at sample ``offset``.

    Sample i is crop i // P of photo i % P (P photos), so any window of P samples spans every photo
    and windows that do not overlap share no crop. ``progress`` gets the number of samples made so far.
    """
    preprocess = preprocess or Preprocess()
    names = photo_names()
    total = max_photo_samples()
    if n < 1:
        raise DataSourceError(f"asked for {n} photo samples; ask for at least 1")
    if offset + n > total:
        raise DataSourceError(
            f"photos hold {total} samples ({len(names)} photos × {len(CROPS)} crops); "
            f"asked for {n} from offset {offset} — use an image folder for more"
        )
    out = []
    for i in range(offset, offset + n):
        image = _photo(names[i % len(names)])
        out.append(preprocess(_crop(image, *CROPS[i // len(names)])))
        if progress is not None:
            progress(len(out))
    return np.stack(out)


@dataclass
class FolderImages:
    """Images read from a folder: the array, the files used, and those skipped as unreadable."""

    array: np.ndarray
    files: list[Path]
    skipped: list[Path] = field(default_factory=list)


def list_image_files(folder: str | Path) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise DataSourceError(f"{root}: not a folder of images")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_image_folder(
    folder: str | Path,
    n: int | None = None,
    preprocess: Preprocess | None = None,
    offset: int = 0,
    progress: Callable[[int], None] | None = None,
) -> FolderImages:
    """Preprocessed images from ``folder`` (recursive, sorted by path); unreadable files are skipped.

    ``progress`` is called once per file tried, with the number of images read so far.
    """
    preprocess = preprocess or Preprocess()
    files = list_image_files(folder)[offset:]
    if not files:
        kinds = ", ".join(IMAGE_SUFFIXES)
        raise DataSourceError(f"{folder}: no images ({kinds}) found — point --data at a folder of images")
    used, skipped, arrays = [], [], []
    for path in files:
        if n is not None and len(arrays) >= n:
            break
        try:
            with Image.open(path) as image:
                arrays.append(preprocess(image))
            used.append(path)
        except (OSError, ValueError):
            skipped.append(path)
        if progress is not None:
            progress(len(arrays))
    if not arrays:
        raise DataSourceError(f"{folder}: none of the {len(files)} image files could be read")
    return FolderImages(np.stack(arrays), used, skipped)


# ---- arrays saved by the user, and one entry point for every kind of source ----

ARRAY_KEYS = ("x", "input", "images")
LABEL_KEYS = ("y", "labels")


@dataclass
class ArraySamples:
    """Samples from a .npy/.npz file: float32 (N, ...) data, labels if the file has them, and a description."""

    array: np.ndarray
    labels: np.ndarray | None
    source: str


def _pick_npz_key(path: Path, keys: list[str], input_name: str | None) -> str:
    """The model input's own name, else the only non-label array, else x / input / images."""
    if input_name is not None and input_name in keys:
        return input_name
    data = [k for k in keys if k not in LABEL_KEYS]
    if len(data) == 1:
        return data[0]
    for key in ARRAY_KEYS:
        if key in keys:
            return key
    wanted = ", ".join(([input_name] if input_name else []) + list(ARRAY_KEYS))
    raise DataSourceError(f"{path}: holds arrays {keys}; store the samples under one of: {wanted}")


def _fits(dim: int | str | None, size: int) -> bool:
    """A model dim given as a string (or None/−1, as ONNX writes dynamic dims) matches any size."""
    return isinstance(dim, str) or dim is None or int(dim) < 0 or int(dim) == size


def load_arrays(
    path: str | Path,
    input_shape: Sequence[int | str],
    input_name: str | None = None,
    n: int | None = None,
    offset: int = 0,
) -> ArraySamples:
    """Samples ``offset`` to ``offset + n`` (at most) from a .npy or .npz file, checked against the model input.

    The array must be numeric with the model input's rank and non-batch dims. In a .npz, labels under
    ``y`` or ``labels`` are kept and sliced alike. A .npy is memory-mapped, so only the slice is read.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise DataSourceError(f"{path}: not a .npy or .npz file")
    if not path.is_file():
        raise DataSourceError(f"{path}: no such file")
    labels, where = None, str(path)
    try:
        if suffix == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.files)
                key = _pick_npz_key(path, keys, input_name)
                array, where = archive[key], f"{path}[{key}]"
                label_key = next((k for k in LABEL_KEYS if k in keys and k != key), None)
                labels = archive[label_key] if label_key else None
    except DataSourceError:
        raise
    except (OSError, ValueError, EOFError) as e:  # not a numpy file, truncated, or pickled objects
        raise DataSourceError(f"{path}: cannot read as {suffix} ({e.__class__.__name__}: {e})") from None
    expected = tuple(input_shape)
    if array.dtype.kind not in "biuf":
        raise DataSourceError(f"{where}: holds {array.dtype} values; save numbers (e.g. float32)")
    if array.ndim != len(expected) or not all(_fits(d, s) for d, s in zip(expected[1:], array.shape[1:])):
        raise DataSourceError(
            f"{where}: shape {array.shape} does not fit the model input {expected}; "
            f"save the samples stacked as (N, {', '.join(str(d) for d in expected[1:])})"
        )
    total = array.shape[0]
    if total == 0:
        raise DataSourceError(f"{where}: holds no samples (shape {array.shape})")
    if labels is not None and len(labels) != total:
        raise DataSourceError(f"{path}: {len(labels)} labels for {total} samples; save one label per sample")
    if offset >= total or (n is not None and n < 1):
        raise DataSourceError(f"{where}: holds {total} samples; asked for {n} from offset {offset}")
    stop = total if n is None else min(total, offset + n)
    data = np.ascontiguousarray(array[offset:stop], dtype=np.float32)
    if labels is not None:
        labels = np.asarray(labels[offset:stop])
    return ArraySamples(data, labels, f"{where} samples {offset}..{stop - 1} of {total}")


@dataclass
class Samples:
    """Calibration or evaluation samples from any source, ready to feed: (N, ...) float32."""

    array: np.ndarray
    labels: np.ndarray | None
    description: str
    skipped: list[str] = field(default_factory=list)


def _image_preprocess(input_shape: Sequence[int | str]) -> Preprocess:
    """``Preprocess.for_input_shape``, taking a shape whose last dim is 1–4 channels (and second is not) as NHWC."""
    shape = tuple(input_shape)
    if len(shape) != 4:
        raise DataSourceError(f"image data needs a 4-D model input, got shape {shape}")
    small = [isinstance(d, int) and 0 < d <= 4 for d in shape]
    spec = current_preprocess()
    layout = (spec.layout if spec is not None and spec.layout else None) or (
        "NHWC" if small[3] and not small[1] else "NCHW")
    if not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise DataSourceError(f"model input {shape} has free image dims; give the resolution to read images at "
                              f"with --shape, e.g. --shape 1,3,224,224")
    if spec is None:
        return Preprocess.for_input_shape(shape, layout=layout)
    return Preprocess.for_input_shape(shape, layout=layout, mean=spec.mean, std=spec.std,
                                      order="BGR" if spec.bgr else "RGB", fit=spec.fit, scale=spec.scale,
                                      pad=spec.pad, anchor=spec.anchor, interp=spec.interp)


def preprocess_text() -> str:
    """The preprocessing in force, for reports."""
    spec = current_preprocess()
    return (spec or PREPROCESS_PRESETS["imagenet"]).describe()


def count_samples(source: str, input_name: str | None = None) -> int | None:
    """How many samples ``source`` holds, without decoding them (None when it cannot be told cheaply)."""
    if source == "photos":
        return max_photo_samples()
    path = Path(source)
    if path.is_dir():
        return len(list_image_files(path))
    try:
        if path.suffix.lower() == ".npy":
            return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return int(archive[_pick_npz_key(path, list(archive.files), input_name)].shape[0])
    except (OSError, ValueError, EOFError, IndexError, DataSourceError):
        return None
    return None


def split_counts(total: int, samples: int, eval_samples: int, minimum: int = 8) -> tuple[int, int] | None:
    """Calibration and held-out counts for ``total`` samples when the defaults ask for more than there are:
    a quarter held out (at least ``minimum``), the rest calibrates. None when the defaults fit."""
    if total >= samples + eval_samples:
        return None
    held = max(minimum, total // 4)
    return total - held, held


def load_samples(
    source: str,
    input_shape: Sequence[int | str],
    n: int | None,
    offset: int = 0,
    input_name: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> Samples:
    """Up to ``n`` samples (all if None) from ``source``: "photos", a folder of images, or a .npy/.npz file.

    Images are preprocessed for ``input_shape`` (``Preprocess.for_input_shape``); ``progress`` gets the
    number of samples done so far.
    """
    if source == "photos":
        count = max_photo_samples() - offset if n is None else n
        array = load_photos(count, _image_preprocess(input_shape), offset, progress)
        return Samples(array, None, f"photos: {count} crops of {len(PHOTOS)} bundled photos from sample {offset} "
                                    f"(preprocessing {preprocess_text()})")
    path = Path(source)
    if path.is_dir():
        folder = load_image_folder(path, n, _image_preprocess(input_shape), offset, progress)
        text = f"{path}: {len(folder.files)} images from file {offset} (preprocessing {preprocess_text()})"
        return Samples(folder.array, None, text, [str(p) for p in folder.skipped])
    if path.suffix.lower() in (".npy", ".npz"):
        arrays = load_arrays(path, input_shape, input_name, n, offset)
        if progress is not None:
            progress(len(arrays.array))
        return Samples(arrays.array, arrays.labels, arrays.source)
    raise DataSourceError(
        f"{source}: not a data source; give 'photos' (bundled sample photos), a folder of images, or a .npy/.npz file"
    )
