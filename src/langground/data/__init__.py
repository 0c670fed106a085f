"""Datasets: every on-disk layout behind one ``open_dataset(root, name, split, **kw)``.

>>> ds = open_dataset("data", "refcoco", "testA")        # doctest: +SKIP
>>> rec = ds[0]; rec.text, rec.boxes, rec.load_mask().shape  # doctest: +SKIP
"""

# Importing each layout module registers its dataset names.
from langground.data import (  # noqa: F401
    clevr,
    clevr_ref,
    flickr30k,
    grefcoco,
    karpathy,
    mdetr,
    refer,
    simrec,
    synth,
    transvg,
)
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
