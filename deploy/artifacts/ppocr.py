"""Real trained third-party models: PaddleOCR's ONNX files from the ``rapidocr-onnxruntime`` wheel, and text
images prepared the way PaddleOCR prepares them.

Zoo weights are seeded, not trained; the digits nets are ours. These files are someone else's, trained on
real text, exported by another exporter (Paddle2ONNX, opset 11/12, Constant-node weights, dynamic dims): the
kind of file a user brings. They ship inside the wheel ``rapidocr-onnxruntime==1.4.4`` on PyPI.

Nothing is downloaded while a verb runs. :func:`fetch` (``make setup`` runs ``python -m deploy.artifacts.ppocr fetch``)
asks pip for the wheel (``pip download --no-deps``), checks its sha256, and extracts the three ONNX files into
``<cache>/ppocr/rapidocr-1.4.4/``; :func:`model_path` only reads that cache and says how to fill it.

:func:`text_line_crops` cuts text lines out of scikit-image's ``page`` scan (rows of ink found by a horizontal
projection profile) in windows of aspect about 4:1, so that stretching them to the classifier's 48×192 input
barely distorts them (PaddleOCR resizes to height 48 keeping the aspect, then pads the right with zeros; at
4:1 the two agree). :func:`orientation_data` turns them into labelled data for the text-direction classifier:
each crop upright (label 0, "0°") and turned 180° (label 1, "180°"), the classifier's two classes — real
labels by construction.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError, MissingDependencyError
from .files import default_cache_dir, sha256_file

WHEEL = "rapidocr-onnxruntime"
VERSION = "1.4.4"
WHEEL_FILE = "rapidocr_onnxruntime-1.4.4-py3-none-any.whl"
WHEEL_SHA256 = "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"
# the files inside the wheel (rapidocr_onnxruntime/models/) and their sha256
MODELS = {
    "cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"),
    "det": ("ch_PP-OCRv4_det_infer.onnx", "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"),
    "rec": ("ch_PP-OCRv4_rec_infer.onnx", "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b"),
}
# PaddleOCR's text-direction classifier: input 3×48×192, BGR, (x/255 − 0.5)/0.5; classes "0" and "180"
CLS_SHAPE = (1, 3, 48, 192)
CLS_LABELS = ("0°", "180°")


def models_dir(cache_dir: Path | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / "ppocr" / f"rapidocr-{VERSION}"


def model_path(which: str = "cls", cache_dir: Path | None = None) -> Path:
    """The cached ONNX file ``which`` (cls, det or rec); never downloads. Missing or altered: exit 3 with the fix."""
    if which not in MODELS:
        raise BadInputError(f"PP-OCR model '{which}': choose from {', '.join(MODELS)}")
    name, digest = MODELS[which]
    path = models_dir(cache_dir) / name
    if not path.is_file():
        raise MissingDependencyError(f"{path}: the PP-OCR model is not in the cache; run `make setup` (or "
                                     f"`python -m deploy.artifacts.ppocr fetch`), which takes it from the "
                                     f"{WHEEL}=={VERSION} "
                                     f"wheel with pip")
    if sha256_file(path) != digest:
        raise MissingDependencyError(f"{path}: sha256 differs from the {WHEEL}=={VERSION} wheel's file; delete it "
                                     f"and run `python -m deploy.artifacts.ppocr fetch`")
    return path


def fetched(cache_dir: Path | None = None) -> bool:
    folder = models_dir(cache_dir)
    return all((folder / name).is_file() and sha256_file(folder / name) == digest for name, digest in MODELS.values())


def fetch(cache_dir: Path | None = None, say=print) -> Path:
    """Fill the cache from the wheel (``pip download --no-deps``, sha256 checked); nothing when it is there."""
    folder = models_dir(cache_dir)
    if fetched(cache_dir):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=folder.parent) as tmp:
        say(f"fetching {WHEEL}=={VERSION} with pip (the PP-OCR ONNX files) into {folder}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"{WHEEL}=={VERSION}", "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheel = Path(tmp) / WHEEL_FILE
        if done.returncode != 0 or not wheel.is_file():
            why = (done.stderr.strip().splitlines() or ["no wheel written"])[-1][:200]
            raise MissingDependencyError(f"pip could not download {WHEEL}=={VERSION}: {why}")
        if sha256_file(wheel) != WHEEL_SHA256:
            raise MissingDependencyError(f"{WHEEL_FILE}: sha256 differs from the pinned one; not extracted")
        staging = Path(tmp) / "models"
        staging.mkdir()
        with zipfile.ZipFile(wheel) as archive:
            for name, digest in MODELS.values():
                with archive.open(f"rapidocr_onnxruntime/models/{name}") as src, open(staging / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                if sha256_file(staging / name) != digest:
                    raise MissingDependencyError(f"{name} in {WHEEL_FILE}: sha256 differs from the pinned one")
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    return folder


# ------------------------------------------------------------------------------------------- text images


@dataclass(frozen=True)
class Crop:
    line: int  # which text line of the image it was cut from
    pixels: np.ndarray  # uint8 (H, W) grey


def _ink(gray: np.ndarray, darker: float) -> np.ndarray:
    """Pixels darker than ``darker`` × the brightest pixel within 15 px: ink on paper, under uneven light."""
    from scipy.ndimage import maximum_filter

    a = gray.astype(np.float32)
    return a < maximum_filter(a, size=(15, 15)) * darker


def text_lines(gray: np.ndarray, min_ink: float = 0.06, min_height: int = 8) -> list[tuple[int, int]]:
    """Row ranges [y0, y1) of text lines: runs of rows whose share of ink pixels is at least ``min_ink``."""
    rows = _ink(gray, 0.6).mean(axis=1) >= min_ink
    lines, start = [], None
    for y, inked in enumerate([*rows, False]):
        if inked and start is None:
            start = y
        elif not inked and start is not None:
            if y - start >= min_height:
                lines.append((start, y))
            start = None
    return lines


def text_line_crops(gray: np.ndarray, aspects: tuple[float, ...] = (3.5, 4.0, 4.5)) -> list[Crop]:
    """Windows along each text line, a quarter of the line's height of margin above and below, of width
    ``aspect`` × height, half a window apart; windows with almost no ink are skipped."""
    ink = _ink(gray, 0.6)
    crops = []
    for index, (y0, y1) in enumerate(text_lines(gray)):
        pad = max(2, (y1 - y0) // 4)
        y0, y1 = max(0, y0 - pad), min(gray.shape[0], y1 + pad)
        height = y1 - y0
        columns = np.flatnonzero(ink[y0:y1].any(axis=0))
        x0, x1 = int(columns.min()), int(columns.max()) + 1
        for aspect in aspects:
            width = int(round(aspect * height))
            for x in range(x0, x1 - width + 1, max(1, width // 2)):
                if ink[y0:y1, x:x + width].mean() >= 0.03:
                    crops.append(Crop(index, np.ascontiguousarray(gray[y0:y1, x:x + width])))
    return crops


def cls_preprocess_spec():
    """PaddleOCR's preprocessing (cls, det and rec alike): BGR, (x/255 − 0.5)/0.5, stretched to the input
    size (see the module's note), as the spec the verbs store in the ONNX files they write."""
    from ..calib.data import make_preprocess_spec

    return make_preprocess_spec("symmetric", bgr=True, fit="stretch")


def orientation_data(image: str = "page") -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Labelled (x, y) for the text-direction classifier from scikit-image's ``image``, split by text line:
    even lines tune, odd lines are held out (no line gives samples to both). Each crop appears upright
    (label 0) and turned 180° (label 1)."""
    import skimage.data
    from PIL import Image

    gray = getattr(skimage.data, image)()
    if gray.ndim == 3:
        gray = np.asarray(Image.fromarray(gray).convert("L"))
    crops = text_line_crops(gray)
    if not crops:
        raise BadInputError(f"scikit-image '{image}': no text lines found")

    def labelled(part: list[Crop]) -> tuple[np.ndarray, np.ndarray]:
        upright = np.stack([_paddle(Image.fromarray(c.pixels), CLS_SHAPE[2:]) for c in part])
        turned = np.ascontiguousarray(upright[:, :, ::-1, ::-1])  # 180°: both spatial axes reversed
        return (np.concatenate([upright, turned]).astype(np.float32),
                np.concatenate([np.zeros(len(part)), np.ones(len(part))]).astype(np.int64))

    return labelled([c for c in crops if c.line % 2 == 0]), labelled([c for c in crops if c.line % 2 == 1])


def write_orientation_npz(folder: Path, input_name: str = "x") -> tuple[Path, Path]:
    """``ocr-cls-tune.npz`` and ``ocr-cls-eval.npz`` in ``folder`` (``{input_name: x, "y": y}``), atomically."""
    from .files import atomic_path

    tune, held = orientation_data()
    paths = []
    for name, (x, y) in (("ocr-cls-tune.npz", tune), ("ocr-cls-eval.npz", held)):
        path = Path(folder) / name
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **{input_name: x, "y": y})
        paths.append(path)
    return paths[0], paths[1]


# ------------------------------------------------------------------------------------------- det and rec

REC_HEIGHT = 48  # PP-OCRv4 rec: 3×48×W, W free (PaddleOCR pads lines to 320 and wider lines widen the batch)
DET_SIZE = 320  # PP-OCRv4 det: any multiple of 32


def _paddle(image, size: tuple[int, int]) -> np.ndarray:
    """PIL image → (3, H, W) by :func:`cls_preprocess_spec` at ``size`` (h, w)."""
    from ..calib.data import Preprocess

    spec = cls_preprocess_spec()
    return Preprocess(size=tuple(size), mean=spec.mean, std=spec.std, order="BGR" if spec.bgr else "RGB",
                      fit=spec.fit, scale=spec.scale)(image)


def text_line_images(gray: np.ndarray) -> list[np.ndarray]:
    """Each whole text line of a grey scan with a quarter of its height of margin, as uint8 (H, W)."""
    lines = []
    for y0, y1 in text_lines(gray):
        pad = max(2, (y1 - y0) // 4)
        lines.append(np.ascontiguousarray(gray[max(0, y0 - pad):min(gray.shape[0], y1 + pad)]))
    return lines


def rec_input(line: np.ndarray, width: int | None = None) -> np.ndarray:
    """One text line for the recognizer, (1, 3, 48, W): W keeps the line's aspect unless ``width`` is given."""
    from PIL import Image

    image = Image.fromarray(line)
    w = width or int(np.ceil(REC_HEIGHT * image.width / image.height))
    return _paddle(image, (REC_HEIGHT, w))[None]


def rec_characters(path: Path) -> list[str]:
    """The recognizer's classes: CTC blank, its dictionary (stored in the file's metadata), then a space."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    text = next((p.value for p in model.metadata_props if p.key == "character"), None)
    if text is None:
        raise BadInputError(f"{path}: no 'character' metadata: not a PaddleOCR recognizer")
    return ["", *text.splitlines(), " "]


def ctc_decode(probs: np.ndarray, characters: list[str]) -> str:
    """Greedy CTC: the best class per time step, repeats merged, blanks (class 0) dropped."""
    best = probs.argmax(axis=-1)
    keep = np.r_[True, best[1:] != best[:-1]] & (best != 0)
    return "".join(characters[i] for i in best[keep])


def rec_data(width: int = 320, aspects: tuple[float, ...] = (5.5, 6.67, 8.0)) -> np.ndarray:
    """Windows along the text lines of scikit-image's ``page`` for the recognizer at 48×``width`` (stretched)."""
    import skimage.data
    from PIL import Image

    crops = text_line_crops(skimage.data.page(), aspects=aspects)
    return np.stack([_paddle(Image.fromarray(c.pixels), (REC_HEIGHT, width)) for c in crops]).astype(np.float32)


def det_data(n: int = 96, size: int = DET_SIZE, seed: int = 0) -> np.ndarray:
    """``n`` crops of scikit-image's ``page`` (45–100 % of its height, aspect 1–2) stretched to size×size."""
    import skimage.data
    from PIL import Image

    page = skimage.data.page()
    height, width = page.shape
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h = int(height * rng.uniform(0.45, 1.0))
        w = min(width, int(h * rng.uniform(1.0, 2.0)))
        y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        out.append(_paddle(Image.fromarray(page[y:y + h, x:x + w]), (size, size)))
    return np.stack(out).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["fetch"]:
        print("usage: python -m deploy.artifacts.ppocr fetch   (the PP-OCR ONNX files from the rapidocr-onnxruntime "
              "wheel into the cache)", file=sys.stderr)
        return 2
    try:
        folder = fetch()
    except MissingDependencyError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    print(f"PP-OCR models: {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
