"""Preprocessing as a first-class option: presets, fits, flags over presets, stored in the ONNX metadata
of what a verb writes and reused by the next verb without the flags."""

import json

import numpy as np
import onnx
import pytest
from PIL import Image

from deploy.calib.data import (
    PREPROCESS_PRESETS,
    DataSourceError,
    Preprocess,
    PreprocessSpec,
    make_preprocess_spec,
    resize_image,
)


def test_presets_are_the_formulas_they_name():
    image = Image.fromarray(np.full((32, 32, 3), 255, np.uint8))  # white: x/255 = 1
    for name, value in (("unit", 1.0), ("symmetric", 1.0), ("imagenet", (1 - 0.485) / 0.229)):
        spec = PREPROCESS_PRESETS[name]
        x = Preprocess(size=(32, 32), mean=spec.mean, std=spec.std)(image)
        assert x[0, 0, 0] == pytest.approx(value, rel=1e-5), name
    x = Preprocess(size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1), scale=1.0)(image)
    assert x.max() == pytest.approx(255.0)  # --scale 1 keeps 0–255


def test_letterbox_pads_with_grey_and_stretch_keeps_everything():
    wide = np.zeros((20, 80, 3), np.uint8)
    wide[:, :40] = 255  # left half white
    image = Image.fromarray(wide)
    unit = dict(mean=(0, 0, 0), std=(1, 1, 1))
    boxed = Preprocess(size=(40, 40), fit="letterbox", **unit)(image)
    assert boxed[0, 0, 0] == pytest.approx(114 / 255)  # top rows: the grey pad
    assert boxed[0, 20, 5] == pytest.approx(1.0) and boxed[0, 20, 35] == pytest.approx(0.0)  # the whole image
    stretched = Preprocess(size=(40, 40), fit="stretch", **unit)(image)
    assert stretched[0, :, :18].min() == pytest.approx(1.0) and stretched[0, :, 22:].max() == pytest.approx(0.0)
    cropped = Preprocess(size=(40, 40), **unit)(image)  # centre crop: the middle of the image only
    assert 0.0 < cropped.mean() < 1.0 and cropped.shape == (3, 40, 40)


def test_flags_over_a_preset_and_bad_flags():
    assert make_preprocess_spec() is None
    spec = make_preprocess_spec("unit", bgr=True, fit="letterbox")
    assert (spec.preset, spec.bgr, spec.fit, spec.mean) == ("unit", True, "letterbox", (0.0, 0.0, 0.0))
    custom = make_preprocess_spec(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), scale=1.0)
    assert custom.preset == "custom" and custom.scale == 1.0
    assert PreprocessSpec.from_json(custom.to_json()) == custom
    for kwargs, message in (({"preset": "yolo"}, "choose from imagenet, unit, symmetric"),
                            ({"fit": "pad"}, "crop, stretch, letterbox"), ({"std": (0.0,)}, "must not be 0"),
                            ({"mean": (0.1, 0.2)}, "1 or 3 values"), ({"layout": "CHW"}, "NCHW or NHWC")):
        with pytest.raises(DataSourceError, match=message):
            make_preprocess_spec(**kwargs)


def test_quantize_stores_it_and_check_reuses_it(cli, tiny_onnx, tmp_path):
    out = tmp_path / "q.onnx"
    result = cli("quantize", tiny_onnx, "-o", out, "--preprocess", "symmetric", "--resize", "letterbox", "--bgr",
                 "--samples", "24", "--eval-samples", "16", "--json", tmp_path / "q.json")
    assert result.exit_code == 0, result.output
    stored = {p.key: p.value for p in onnx.load(str(out)).metadata_props}["deploy.preprocess"]
    assert json.loads(stored)["preset"] == "symmetric" and json.loads(stored)["fit"] == "letterbox"
    assert "preprocessing symmetric letterbox BGR" in json.loads((tmp_path / "q.json").read_text())["calib"]
    result = cli("check", tiny_onnx, out, "--precision", "int8", "--json", tmp_path / "c.json")
    assert "preprocessing symmetric letterbox BGR, as stored in" in result.stderr
    assert "(preprocessing symmetric letterbox BGR)" in json.loads((tmp_path / "c.json").read_text())["data"]
    result = cli("check", tiny_onnx, out, "--precision", "int8", "--preprocess", "unit", "--json", tmp_path / "d.json")
    assert "(preprocessing unit crop)" in json.loads((tmp_path / "d.json").read_text())["data"]  # flags win
    result = cli("check", tiny_onnx, tiny_onnx, "--json", tmp_path / "e.json")
    assert "(preprocessing imagenet crop)" in json.loads((tmp_path / "e.json").read_text())["data"]  # the default
    result = cli("check", tiny_onnx, tiny_onnx, "--std", "0,1,1")
    assert result.exit_code == 2 and "--std: values must not be 0" in result.stderr


def test_letterbox_anchor_and_pad_value_as_a_package_states_them():
    wide = Image.fromarray(np.full((20, 80, 3), 255, np.uint8))  # white, 4:1
    unit = dict(mean=(0, 0, 0), std=(1, 1, 1), fit="letterbox")
    centred = Preprocess(size=(40, 40), **unit)(wide)
    assert centred[0, 0, 0] == pytest.approx(114 / 255) and centred[0, 20, 20] == pytest.approx(1.0)
    corner = Preprocess(size=(40, 40), pad=0, anchor="top-left", **unit)(wide)  # YOLOX: pad bottom and right
    assert corner[0, :10].min() == pytest.approx(1.0)  # the image sits in the top rows
    assert corner[0, 10:].max() == pytest.approx(0.0)  # below it: pad 0, not grey 114


def test_opencv_bilinear_does_not_smooth_when_shrinking_and_pillow_does():
    stripes = np.zeros((4, 4, 3), np.uint8)
    stripes[:, 2:] = 100  # [0, 0, 100, 100] across
    image = Image.fromarray(stripes)
    cv2 = np.asarray(resize_image(image, (2, 2), "cv2-linear"))[0, :, 0]
    assert list(cv2) == [0, 100]  # source x = 0.5 and 2.5: the mean of two equal pixels each
    pillow = np.asarray(resize_image(image, (2, 2), "bilinear"))[0, :, 0]
    assert 0 < pillow[0] < pillow[1] < 100  # Pillow's filter widens with the shrink: the stripes blur
    up = np.asarray(resize_image(Image.fromarray(stripes[:, 1:3]), (4, 2), "cv2-linear"))[0, :, 0]
    assert list(up) == [0, 25, 75, 100]  # (x + 0.5)/2 − 0.5, clamped at the borders
    assert list(np.asarray(resize_image(image, (2, 2), "cv2-nearest"))[0, :, 0]) == [0, 100]
    assert np.asarray(resize_image(image, (2, 2), "area"))[0, 0, 0] == 0  # the box over [0, 0]


def test_new_flags_round_trip_and_old_metadata_means_the_old_defaults():
    spec = make_preprocess_spec("unit", fit="letterbox", pad=0, anchor="top-left", interp="cv2-linear")
    assert PreprocessSpec.from_json(spec.to_json()) == spec
    assert spec.describe() == "unit letterbox pad 0 top-left cv2-linear"
    old = json.dumps({"preset": "unit", "mean": [0, 0, 0], "std": [1, 1, 1], "scale": 255.0, "bgr": False,
                      "fit": "letterbox", "layout": None})  # written before these flags existed
    assert (PreprocessSpec.from_json(old).pad, PreprocessSpec.from_json(old).anchor,
            PreprocessSpec.from_json(old).interp) == (114, "center", "bilinear")
    for kwargs, message in (({"pad": 300}, "0 to 255"), ({"anchor": "bottom"}, "center, top-left"),
                            ({"interp": "linear"}, "cv2-linear")):
        with pytest.raises(DataSourceError, match=message):
            make_preprocess_spec(**kwargs)


def test_the_flags_reach_the_file_a_verb_writes(cli, tiny_onnx, tmp_path):
    out = tmp_path / "q.onnx"
    result = cli("quantize", tiny_onnx, "-o", out, "--preprocess", "unit", "--resize", "letterbox", "--pad", "0",
                 "--anchor", "top-left", "--interp", "cv2-linear", "--samples", "24", "--eval-samples", "16",
                 "--json", tmp_path / "q.json")
    assert result.exit_code == 0, result.output
    stored = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["deploy.preprocess"])
    assert (stored["pad"], stored["anchor"], stored["interp"]) == (0, "top-left", "cv2-linear")
    assert "preprocessing unit letterbox pad 0 top-left cv2-linear" in json.loads((tmp_path / "q.json").read_text())[
        "calib"]
    result = cli("check", tiny_onnx, tiny_onnx, "--interp", "linear")
    assert result.exit_code == 2 and "--interp linear: choose from" in result.stderr
