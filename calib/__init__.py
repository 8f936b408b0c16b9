"""Calibration and evaluation data (``deploy.calib``): sources, preprocessing, observers, ranges.

``calib`` never runs a model; it is handed a ``run(feeds)`` callable. It imports nothing else of ours.
"""

from .data import (
    PHOTOS,
    ArraySamples,
    DataSourceError,
    Preprocess,
    Samples,
    load_arrays,
    load_image_folder,
    load_photos,
    load_samples,
    photo_names,
)
from .observers import (
    METHODS,
    HistogramCollector,
    TensorHistogram,
    collect_histograms,
    compute_range,
    compute_ranges,
)
from .table import RangesTable, fingerprint_arrays, read_trt_cache, write_trt_cache

__all__ = [
    "METHODS",
    "PHOTOS",
    "ArraySamples",
    "DataSourceError",
    "HistogramCollector",
    "Preprocess",
    "RangesTable",
    "Samples",
    "TensorHistogram",
    "collect_histograms",
    "compute_range",
    "compute_ranges",
    "fingerprint_arrays",
    "load_arrays",
    "load_image_folder",
    "load_photos",
    "load_samples",
    "photo_names",
    "read_trt_cache",
    "write_trt_cache",
]
