"""A site's data: CVAT exports or a live CVAT read into tensors; example data written as exports."""

from flotilla.data.cvat_images import (
    LabelledImages,
    split_train_holdout,
)
from flotilla.data.detection import DetectionImages
from flotilla.data.errors import DataSourceError
from flotilla.data.labels import LabelMap, LabelReport
from flotilla.data.site import ImageShape, SiteData, load_site_data

__all__ = [
    "DataSourceError",
    "DetectionImages",
    "ImageShape",
    "LabelMap",
    "LabelReport",
    "LabelledImages",
    "SiteData",
    "load_site_data",
    "split_train_holdout",
]
