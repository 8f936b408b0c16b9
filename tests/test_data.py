"""Bundled photos and image folders: real images, deterministic, disjoint windows, clear errors."""

import numpy as np
import pytest
from PIL import Image

from deploy.calib.data import (
    DataSourceError,
    Preprocess,
    load_image_folder,
    load_photos,
    max_photo_samples,
    photo_names,
)


def test_photos_are_real_normalised_images():
    x = load_photos(len(photo_names()), Preprocess(size=(64, 64)))
    assert x.shape == (len(photo_names()), 3, 64, 64) and x.dtype == np.float32
    assert np.isfinite(x).all()
    # ImageNet normalisation: roughly zero-mean, unit-ish spread, and photos differ from each other
    assert abs(float(x.mean())) < 1.0 and 0.3 < float(x.std()) < 2.0
    per_photo = x.reshape(len(x), -1).mean(axis=1)
    assert len(np.unique(per_photo.round(4))) == len(x)


def test_photos_deterministic_and_windows_disjoint():
    p = Preprocess(size=(32, 32))
    a = load_photos(10, p, offset=0)
    assert np.array_equal(a, load_photos(10, p, offset=0))
    b = load_photos(10, p, offset=10)
    flat_a, flat_b = a.reshape(10, -1), b.reshape(10, -1)
    assert not any(np.allclose(x, y) for x in flat_a for y in flat_b)


def test_photo_limits_and_greyscale():
    with pytest.raises(DataSourceError, match="samples"):
        load_photos(max_photo_samples() + 1)
    grey = load_photos(2, Preprocess.for_input_shape((1, 1, 28, 28)))
    assert grey.shape == (2, 1, 28, 28)
    with pytest.raises(DataSourceError, match="channels"):
        Preprocess.for_input_shape((1, 5, 28, 28))


def test_image_folder_skips_unreadable(tmp_path):
    rng = np.random.default_rng(0)
    sub = tmp_path / "nested"
    sub.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(sub / f"img{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    folder = load_image_folder(tmp_path, preprocess=Preprocess(size=(16, 16)))
    assert folder.array.shape == (3, 3, 16, 16)
    assert [p.name for p in folder.skipped] == ["broken.jpg"]


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(DataSourceError, match="no images"):
        load_image_folder(tmp_path)
