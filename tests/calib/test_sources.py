"""Calibration sources: .npy/.npz arrays checked against the model input, and the photos/folder/file dispatcher."""

import numpy as np
import pytest
from PIL import Image

from deploy.calib.data import DataSourceError, load_arrays, load_image_folder, load_samples


def write_pngs(folder, count: int, size=(40, 50), mode="RGB") -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        shape = (size[0], size[1], 3) if mode == "RGB" else size
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(folder / f"img{i}.png")


# ---- load_arrays ----


def test_npy_is_read_sliced_and_converted(tmp_path):
    data = np.arange(5 * 3 * 4 * 4, dtype=np.float64).reshape(5, 3, 4, 4)
    np.save(tmp_path / "calib.npy", data)
    got = load_arrays(tmp_path / "calib.npy", (1, 3, 4, 4), n=2, offset=1)
    assert got.array.dtype == np.float32 and got.array.flags.c_contiguous and got.labels is None
    assert np.array_equal(got.array, data[1:3].astype(np.float32))
    assert "calib.npy" in got.source
    assert load_arrays(tmp_path / "calib.npy", ("N", 3, 4, 4), n=100).array.shape == (5, 3, 4, 4)  # n is a cap


def test_npz_key_choice_and_labels_sliced_alike(tmp_path):
    x, y = np.random.default_rng(0).random((6, 2, 3)), np.arange(6) * 10
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    got = load_arrays(tmp_path / "xy.npz", ("batch", 2, 3), n=3, offset=2)
    assert np.allclose(got.array, x[2:5]) and np.array_equal(got.labels, [20, 30, 40])
    # the input's own name wins; a single non-label array is taken whatever its name
    np.savez(tmp_path / "named.npz", pixel_values=x, x=x * 0, labels=y)
    got = load_arrays(tmp_path / "named.npz", (1, 2, 3), input_name="pixel_values")
    assert np.allclose(got.array, x) and np.array_equal(got.labels, y) and "pixel_values" in got.source
    np.savez(tmp_path / "single.npz", data=x)
    assert np.allclose(load_arrays(tmp_path / "single.npz", (1, 2, 3)).array, x)
    np.savez(tmp_path / "images.npz", images=x, other=x[:, :1])
    assert np.allclose(load_arrays(tmp_path / "images.npz", (1, 2, 3)).array, x)


def test_symbolic_dims_match_anything(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 3, 7, 9), np.float16))
    assert load_arrays(tmp_path / "a.npy", ["N", 3, "height", "width"]).array.shape == (2, 3, 7, 9)
    assert load_arrays(tmp_path / "a.npy", [None, 3, -1, 9]).array.shape == (2, 3, 7, 9)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((3, 4, 4), np.float32), r"shape \(3, 4, 4\) does not fit the model input \(1, 3, 4, 4\); save"),
        (np.zeros((2, 1, 4, 4), np.float32), r"shape \(2, 1, 4, 4\) does not fit .* as \(N, 3, 4, 4\)"),
        (np.zeros((0, 3, 4, 4), np.float32), "holds no samples"),
        (np.array([["a"] * 48]).reshape(1, 3, 4, 4), "holds <U1 values"),
    ],
)
def test_bad_arrays_are_one_line_errors(tmp_path, array, message):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(DataSourceError, match=message) as error:
        load_arrays(path, (1, 3, 4, 4))
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_bad_files_and_slices(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 3)), b=np.zeros((2, 3)))
    with pytest.raises(DataSourceError, match=r"holds arrays \['a', 'b'\]; store the samples under one of: x, input"):
        load_arrays(tmp_path / "two.npz", (1, 3))
    np.savez(tmp_path / "labels.npz", x=np.zeros((4, 3)), y=np.arange(3))
    with pytest.raises(DataSourceError, match="3 labels for 4 samples"):
        load_arrays(tmp_path / "labels.npz", (1, 3))
    np.save(tmp_path / "ok.npy", np.zeros((4, 3)))
    with pytest.raises(DataSourceError, match="holds 4 samples; asked for 2 from offset 4"):
        load_arrays(tmp_path / "ok.npy", (1, 3), n=2, offset=4)
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(DataSourceError, match="cannot read as .npy"):
        load_arrays(tmp_path / "junk.npy", (1, 3))
    with pytest.raises(DataSourceError, match="no such file"):
        load_arrays(tmp_path / "missing.npz", (1, 3))


# ---- load_samples ----


def test_samples_from_a_folder_with_progress(tmp_path):
    write_pngs(tmp_path / "imgs", 4)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"no png here")
    calls = []
    s = load_samples(str(tmp_path / "imgs"), (1, 3, 16, 16), n=3, progress=calls.append)
    assert s.array.shape == (3, 3, 16, 16) and s.array.dtype == np.float32 and s.labels is None
    assert [p.rsplit("/", 1)[-1] for p in s.skipped] == ["broken.png"]  # sorted first: broken < img0
    assert calls == [0, 1, 2, 3]  # once per file tried, with images read so far
    assert np.array_equal(s.array[1:], load_samples(str(tmp_path / "imgs"), (1, 3, 16, 16), n=2, offset=2).array)


def test_samples_nhwc_and_greyscale_inputs(tmp_path):
    write_pngs(tmp_path, 2)
    assert load_samples(str(tmp_path), (1, 16, 12, 3), n=2).array.shape == (2, 16, 12, 3)
    assert load_samples(str(tmp_path), ("N", 1, 8, 8), n=None).array.shape == (2, 1, 8, 8)


def test_samples_from_photos_and_arrays(tmp_path):
    s = load_samples("photos", (1, 3, 24, 24), n=2, offset=1, progress=(calls := []).append)
    assert s.array.shape == (2, 3, 24, 24) and "photos" in s.description and calls == [1, 2]
    np.savez(tmp_path / "d.npz", input=np.ones((3, 5), np.float32), labels=np.array([7, 8, 9]))
    s = load_samples(str(tmp_path / "d.npz"), (1, 5), n=2, offset=1)
    assert s.array.shape == (2, 5) and np.array_equal(s.labels, [8, 9]) and s.skipped == []


def test_unknown_source_explains_the_three_forms(tmp_path):
    with pytest.raises(DataSourceError, match="give 'photos'.*a folder of images, or a .npy/.npz file"):
        load_samples("imagenet", (1, 3, 8, 8), n=1)
    with pytest.raises(DataSourceError, match="not a data source"):
        load_samples(str(tmp_path / "missing_folder"), (1, 3, 8, 8), n=1)


@pytest.mark.parametrize("shape, channels", [((1, 2, 8, 8), 2), ((1, 4, 8, 8), 4), ((1, 8, 8, 4), 4)])
def test_wrong_channel_count_is_a_clear_error(tmp_path, shape, channels):
    write_pngs(tmp_path, 1)
    with pytest.raises(DataSourceError, match=f"^image data gives 1 or 3 channels, the model input has {channels}$"):
        load_samples(str(tmp_path), shape, n=1)
    with pytest.raises(DataSourceError, match="channels"):
        load_samples("photos", shape, n=1)


def test_image_sources_need_fixed_4d_inputs(tmp_path):
    write_pngs(tmp_path, 1)
    with pytest.raises(DataSourceError, match="4-D model input"):
        load_samples(str(tmp_path), (1, 3, 8), n=1)
    with pytest.raises(DataSourceError, match="free image dims"):
        load_samples(str(tmp_path), ("N", 3, "H", "W"), n=1)


def test_folder_errors(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    with pytest.raises(DataSourceError, match="no images"):
        load_samples(str(tmp_path / "notes"), (1, 3, 8, 8), n=1)
    (tmp_path / "fake").mkdir()
    for name in ("a.png", "b.jpg"):
        (tmp_path / "fake" / name).write_bytes(b"\x00" * 64)
    with pytest.raises(DataSourceError, match="none of the 2 image files could be read"):
        load_samples(str(tmp_path / "fake"), (1, 3, 8, 8), n=1)
    # the folder loader's own defaults are unchanged
    write_pngs(tmp_path / "real", 2)
    assert load_image_folder(tmp_path / "real").array.shape == (2, 3, 224, 224)
