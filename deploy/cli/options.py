"""The one vocabulary of the CLI: every option that more than one verb takes is defined here, once.

A verb's signature uses these ``Annotated`` types, so the name, short form and help text of a shared
option cannot drift between verbs (tests/test_cli_vocabulary.py asserts every verb uses these very
objects). Defaults stay in each verb's signature: they are the verb's to choose.

Renamed options keep their old spelling for one release as hidden aliases (:func:`renamed`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import BadInputError

# --- options (the typer.Option objects are shared: the vocabulary test checks identity) --------------
WEIGHTS = typer.Option("--weights", "-w", help="Checkpoint for the (first) PyTorch model: .pt/.pth/.bin/.ckpt "
                       "(weights-only unpickling: pickled code is refused) or .safetensors; torchvision "
                       "checkpoints fit the zoo.")
WEIGHTS_B = typer.Option("--weights-b", help="Checkpoint for the second model (the candidate of check, the "
                         "second artifact of bench).")
SHAPE = typer.Option("--shape", help="Input shape, e.g. 1,3,224,224; for several inputs one --shape per input "
                     "as name=dims (--shape x=1,3,224,224 --shape y=1,10). Default: the zoo entry's; required "
                     "for user models; fills the free dims of an ONNX file.")
DATA = typer.Option("--data", help="Inputs to run: 'photos' (sample photos bundled with scikit-image and "
                    "scikit-learn, ImageNet preprocessing), a folder of images (recursive), an .npy/.npz array "
                    "file (used as is; labels from its 'labels'/'y' key), 'random' (seeded noise), or 'auto' "
                    "(photos for one image input, else random).")
SAMPLES = typer.Option("--samples", help="How many samples to read from --data.")
RUN_BATCH = typer.Option("--run-batch", help="Samples per inference run (default: the verb's; a file's fixed "
                         "batch wins).")
THREADS = typer.Option("--threads", help="CPU threads for every backend and session (default: the physical "
                       "cores this process may use).")
JSON = typer.Option("--json", help="Also write the report as JSON to this file (with deploy's version, the "
                    "command, a UTC timestamp, the sha256 of every input and output file, the machine).")
KEEP_FAILED = typer.Option("--keep-failed", help="When the verdict is FAILED, still write the output (the "
                           "best found), for inspection. Default: a failed verb writes nothing.")
DYNAMIC = typer.Option("--dynamic", help="Axes the exported file leaves free: a comma list of batch, height, "
                       "width (height/width: the last two dims of NCHW inputs), or none.")

PREPROCESS = typer.Option("--preprocess", help="How images become inputs: imagenet (the default: short side to "
                          "size·256/224, centre crop, x/255, ImageNet mean/std), unit (x/255: detectors), symmetric "
                          "((x/255 − 0.5)/0.5: Paddle). Stored in the ONNX files the verb writes; later verbs reuse "
                          "it.", rich_help_panel="Preprocessing")
MEAN = typer.Option("--mean", help="Per-channel mean subtracted after /scale, e.g. 0.5,0.5,0.5 (over the preset).",
                    rich_help_panel="Preprocessing")
STD = typer.Option("--std", help="Per-channel std divided by after the mean, e.g. 0.5,0.5,0.5.",
                   rich_help_panel="Preprocessing")
SCALE = typer.Option("--scale", help="Pixels are divided by this first (default 255; 1 keeps 0–255).",
                     rich_help_panel="Preprocessing")
BGR = typer.Option("--bgr/--rgb", help="Channel order the model was trained on (OpenCV/Paddle: BGR).",
                   rich_help_panel="Preprocessing")
RESIZE = typer.Option("--resize", help="crop (the default: ImageNet evaluation), stretch, or letterbox (fit and "
                      "pad with grey 114, YOLO-style).", rich_help_panel="Preprocessing")
LAYOUT = typer.Option("--layout", help="NCHW or NHWC (default: told from the input shape).",
                      rich_help_panel="Preprocessing")
PAD = typer.Option("--pad", help="Grey level letterbox pads with, 0–255 (default 114, YOLO's).",
                   rich_help_panel="Preprocessing")
ANCHOR = typer.Option("--anchor", help="Where letterbox puts the image: center (default) or top-left (padding "
                      "only bottom and right, as YOLOX does).", rich_help_panel="Preprocessing")
INTERP = typer.Option("--interp", help="Resize filter: bilinear (the default, Pillow's: smooths when shrinking), "
                      "bicubic, lanczos, nearest, area (OpenCV's INTER_AREA when shrinking), cv2-linear and "
                      "cv2-nearest (OpenCV's INTER_LINEAR / INTER_NEAREST: what cv2.resize does by default).",
                      rich_help_panel="Preprocessing")

Weights = Annotated[str | None, WEIGHTS]
WeightsB = Annotated[str | None, WEIGHTS_B]
Shape = Annotated[list[str] | None, SHAPE]
Data = Annotated[str, DATA]
Samples = Annotated[int, SAMPLES]
RunBatch = Annotated[int | None, RUN_BATCH]
Threads = Annotated[int | None, THREADS]
Json = Annotated[Path | None, JSON]
KeepFailed = Annotated[bool, KEEP_FAILED]
Dynamic = Annotated[str | None, DYNAMIC]
Preprocess = Annotated[str | None, PREPROCESS]
Mean = Annotated[str | None, MEAN]
Std = Annotated[str | None, STD]
Scale = Annotated[float | None, SCALE]
Bgr = Annotated[bool | None, BGR]
Resize = Annotated[str | None, RESIZE]
Layout = Annotated[str | None, LAYOUT]
Pad = Annotated[int | None, PAD]
LetterboxAnchor = Annotated[str | None, ANCHOR]
Interp = Annotated[str | None, INTERP]

SHARED = {"weights": WEIGHTS, "weights_b": WEIGHTS_B, "shape": SHAPE, "data": DATA, "samples": SAMPLES,
          "run_batch": RUN_BATCH, "threads": THREADS, "json_path": JSON, "keep_failed": KEEP_FAILED,
          "dynamic": DYNAMIC, "preprocess": PREPROCESS, "mean": MEAN, "std": STD, "scale": SCALE, "bgr": BGR,
          "resize": RESIZE, "layout": LAYOUT, "pad": PAD, "anchor": ANCHOR, "interp": INTERP}

# --- the old spellings, hidden, for one release --------------------------------------------------------
OLD_INPUTS = typer.Option("--inputs", hidden=True, help="Old name of --samples.")
OLD_CALIB = typer.Option("--calib", hidden=True, help="Old name of --data.")
OLD_WEIGHTS_A = typer.Option("--weights-a", hidden=True, help="Old name of --weights.")
OLD_BATCH = typer.Option("--batch", hidden=True, help="Old name of --run-batch.")

OldInputs = Annotated[int | None, OLD_INPUTS]
OldCalib = Annotated[str | None, OLD_CALIB]
OldWeightsA = Annotated[str | None, OLD_WEIGHTS_A]
OldBatch = Annotated[int | None, OLD_BATCH]

RENAMED = {"--inputs": "--samples", "--calib": "--data", "--weights-a": "--weights", "--batch": "--run-batch"}


def renamed(new_value, old_value, old: str, default=None):
    """The value of a renamed option: the new spelling's, or the old one's (with a note on stderr)."""
    if old_value is None:
        return new_value
    new = RENAMED[old]
    if new_value != default:
        raise BadInputError(f"{old} and {new} are the same option (the old and the new name); give {new} once")
    typer.echo(f"note: {old} is now {new}; the old name goes away in the next release", err=True)
    return old_value


def examples(*lines: str) -> str:
    """A verb's help epilog: two or three commands a user can copy (one paragraph each, so rich keeps the
    lines apart)."""
    return "Examples:\n\n" + "\n\n".join(f"  $ {line}" for line in lines)
