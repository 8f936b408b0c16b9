"""Calibration and evaluation data (``deploy.calib``): sources, preprocessing, observers, ranges.

``calib`` never runs a model; it is handed a ``run(feeds)`` callable. It imports nothing else of ours.
"""

from .data import PHOTOS, Preprocess, load_image_folder, load_photos, photo_names

__all__ = ["PHOTOS", "Preprocess", "load_image_folder", "load_photos", "photo_names"]
