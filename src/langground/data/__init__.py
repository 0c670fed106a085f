"""Datasets: every on-disk layout behind one ``open_dataset(root, name, split, **kw)``.

>>> ds = open_dataset("data", "refcoco", "testA")        # doctest: +SKIP
>>> rec = ds[0]; rec.text, rec.boxes, rec.load_mask().shape  # doctest: +SKIP
"""

from langground.data import grefcoco, refer  # noqa: F401  (registers the layouts)
from langground.data.base import (
    ALL_SPLITS,
    DatasetProtocol,
    Problem,
    RecordDataset,
    dataset_spec,
    detect_datasets,
    list_datasets,
    open_dataset,
    register_dataset,
)
from langground.types import GroundingRecord

__all__ = [
    "ALL_SPLITS",
    "DatasetProtocol",
    "GroundingRecord",
    "Problem",
    "RecordDataset",
    "dataset_spec",
    "detect_datasets",
    "list_datasets",
    "open_dataset",
    "register_dataset",
]
