"""refer-toolkit layout: RefCOCO, RefCOCO+, RefCOCOg (umd / google), RefCLEF.

``<root>/<ds>/refs(<splitBy>).p`` (a Python-2 pickle: list of refs with ``ann_id`` int and sentences
``{sent_id, sent, raw, tokens}``) + ``<root>/<ds>/instances.json`` (COCO); images by ``image_id`` via
instances.json ``file_name`` under ``<root>/images/train2014``, ``<root>/images/mscoco/images/train2014``
(the toolkit's path), ``<root>/images/saiapr_tc-12`` (RefCLEF) or ``<root>/images``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from langground.data.base import Collector, DatasetProtocol, register_dataset
from langground.data.coco import CocoInstances
from langground.data.protocols import (
    REFCLEF_BERKELEY,
    REFCLEF_UNC,
    REFCOCO,
    REFCOCO_PLUS,
    REFCOCOG_GOOGLE,
    REFCOCOG_UMD,
)
from langground.data.refs import (
    RefsBuilder,
    RefsDataset,
    describe_refs_file,
    find_root_and_dir,
    fix_py2_text,
    image_candidates,
    needed_ids,
)
from langground.errors import DataError


class _RefsUnpickler(pickle.Unpickler):
    """A refs pickle holds lists, dicts, strings and numbers only: refuse to import anything else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "dtype"),
        ("copy_reg", "_reconstructor"),
        ("__builtin__", "object"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refers to {module}.{name}")


def load_pickle(path: Path) -> tuple[Any, bool]:
    """Load a (possibly Python-2) pickle; returns ``(object, decoded_as_latin1)``.

    Read from the file (not from its bytes in memory): a RefCOCO pickle's objects are the peak of
    opening the index, its bytes need not sit beside them.
    """
    for encoding in ("ASCII", "latin1"):
        try:
            with path.open("rb") as f:
                return _RefsUnpickler(f, encoding=encoding).load(), encoding == "latin1"
        except FileNotFoundError:
            raise DataError(f"{path}: file not found") from None
        except IsADirectoryError:
            raise DataError(f"{path}: is a directory, expected a refs pickle") from None
        except UnicodeDecodeError:
            # Python-2 `str` objects are bytes: ASCII fails on the first non-ASCII byte.
            continue
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise DataError(
                f"{path}: not a refs pickle ({e}); expected a pickled list of ref dicts"
            ) from None
    raise AssertionError("unreachable: latin1 decodes every byte string")


def read_refs_pickle(
    path: Path, split: str, *, multi: bool = False, bad: Collector | None = None
) -> tuple[RefsBuilder, bool]:
    refs, latin1 = load_pickle(path)
    if not isinstance(refs, list):
        raise DataError(f"{path}: pickle holds a {type(refs).__name__}, expected a list of ref dicts")
    builder = RefsBuilder(path, split, bad)
    for i, ref in enumerate(refs):
        builder.add(ref, i, multi)
    return builder, latin1


def open_refer(
    root: Path,
    split: str,
    *,
    name: str = "refcoco",
    dataset: str = "refcoco",
    split_by: str = "unc",
    image_dir: str | Path | None = None,
    strict: bool = True,
    protocol: DatasetProtocol | None = None,
    refs_file: str | None = None,
    images_subdir: str | None = None,
    task: str = "rec",
) -> RefsDataset:
    """Open ``<root>/<dataset>/refs(<split_by>).p`` + ``instances.json``; one record per sentence."""
    refs_name = refs_file or f"refs({split_by}).p"
    data_root, ds_dir = find_root_and_dir(root, dataset, "refs(*).p")
    refs_path = ds_dir / refs_name
    if not refs_path.is_file():
        raise DataError(f"{refs_path}: refs file not found ({describe_refs_file(ds_dir, 'refs(*).p')})")
    inst_path = ds_dir / "instances.json"
    if not inst_path.is_file():
        raise DataError(f"{inst_path}: instances file not found (expected next to {refs_name})")
    bad = Collector(strict)
    builder, latin1 = read_refs_pickle(refs_path, split, bad=bad)
    keep_anns, keep_images = needed_ids(builder)
    instances = CocoInstances.load(inst_path, keep_anns, keep_images, bad)
    if images_subdir is not None:
        candidates = [data_root / images_subdir]
    else:
        candidates = image_candidates(data_root, ("images/saiapr_tc-12",) if dataset == "refclef" else ())
    return RefsDataset(
        builder=builder,
        instances=instances,
        image_dirs=candidates,
        image_dir=Path(image_dir) if image_dir else None,
        root=data_root,
        name=name,
        split=split,
        protocol=protocol or REFCOCO,
        task=task,
        layout="refer",
        strict=strict,
        text_fix=fix_py2_text if latin1 else None,
    )


def _detector(dataset: str, split_by: str):  # noqa: ANN202 - small closure factory
    def detect(root: Path) -> bool:
        return (root / dataset / f"refs({split_by}).p").is_file()

    return detect


for _name, _ds, _by, _protocol, _desc in (
    ("refcoco", "refcoco", "unc", REFCOCO, "RefCOCO, UNC splits train/val/testA/testB (refer toolkit)"),
    (
        "refcoco+",
        "refcoco+",
        "unc",
        REFCOCO_PLUS,
        "RefCOCO+, UNC splits train/val/testA/testB (refer toolkit)",
    ),
    ("refcocog", "refcocog", "umd", REFCOCOG_UMD, "RefCOCOg, UMD splits train/val/test (refer toolkit)"),
    (
        "refcocog-google",
        "refcocog",
        "google",
        REFCOCOG_GOOGLE,
        "RefCOCOg, Google splits train/val (refer toolkit)",
    ),
    ("refclef", "refclef", "unc", REFCLEF_UNC, "RefCLEF / ReferIt, UNC splits (refer toolkit)"),
    (
        "refclef-berkeley",
        "refclef",
        "berkeley",
        REFCLEF_BERKELEY,
        "RefCLEF / ReferIt, Berkeley splits (refer toolkit)",
    ),
):
    register_dataset(
        _name,
        layout="refer",
        opener=open_refer,
        detect=_detector(_ds, _by),
        description=_desc,
        protocol=_protocol,
        dataset=_ds,
        split_by=_by,
    )
