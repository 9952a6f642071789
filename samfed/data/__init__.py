"""Data layer: readers for real layouts, a synthetic generator, federated splits and checks.

Light on purpose: importing `samfed.data` (or `samfed.data.io`) never imports torch; the torch
`SegDataset` lives in `samfed.data.dataset` and is imported only where it is used.
"""

from samfed.data.io import IMAGE_EXTS, image_size, read_image, read_mask
from samfed.data.readers import Dataset, Sample, load_dataset

__all__ = ["IMAGE_EXTS", "Dataset", "Sample", "image_size", "load_dataset", "read_image", "read_mask"]
