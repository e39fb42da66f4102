"""A site's data: CVAT exports read into tensors, and example data written as CVAT exports."""

from flotilla.data.cvat_images import (
    ClassificationSample,
    DataSourceError,
    ExportIndex,
    LabelledImages,
    load_classification,
    read_classification_index,
    split_train_holdout,
)

__all__ = [
    "ClassificationSample",
    "DataSourceError",
    "ExportIndex",
    "LabelledImages",
    "load_classification",
    "read_classification_index",
    "split_train_holdout",
]
