"""gRefCOCO layout: ``<root>/grefcoco/grefs(unc).json`` + ``<root>/grefcoco/instances.json``.

Like the refer layout, but ``ann_id`` / ``category_id`` are lists: several objects (multi-target:
one box per object, union mask) or ``[-1]`` with ``no_target: true`` (no box, empty mask). Refs
without sentences are skipped, as in ReLA's loader. The JSON is parsed with a hook that compacts each
sentence and ref as soon as it is decoded, so the 278k-expression file never exists as Python dicts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langground.data.base import Collector, DatasetProtocol, register_dataset
from langground.data.coco import CocoInstances, read_json
from langground.data.protocols import GREFCOCO
from langground.data.refs import (
    RefsBuilder,
    RefsDataset,
    compact_sentence,
    describe_refs_file,
    find_root_and_dir,
    image_candidates,
    needed_ids,
)
from langground.errors import DataError


def read_grefs_json(path: Path, split: str, bad: Collector | None = None) -> RefsBuilder:
    builder = RefsBuilder(path, split, bad)
    count = [0]

    def hook(d: dict[str, Any]) -> Any:
        if "sentences" in d and ("ref_id" in d or "ann_id" in d):
            builder.add(d, count[0], multi=True)
            count[0] += 1
            return None
        if "sent_id" in d:
            try:
                return compact_sentence(d, str(path))
            except DataError:
                return d  # compacted again by its ref, whose error then names the ref
        return d

    top = read_json(path, hook)
    if not isinstance(top, list):
        raise DataError(f"{path}: top level is a {type(top).__name__}, expected a list of gRefCOCO refs")
    # Entries the hook did not take are not refs (a missing key): each is reported with its id.
    for i, x in enumerate(top):
        if x is not None:
            n = len(builder.bad.problems)
            builder.add(x, i, multi=True)  # names the missing key when it is a dict
            if len(builder.bad.problems) == n:
                builder.bad(
                    f"#{i}", DataError(f"{path}: entry {i} is not a ref dict with ref_id/ann_id/sentences")
                )
    return builder


def open_grefcoco(
    root: Path,
    split: str,
    *,
    name: str = "grefcoco",
    dataset: str = "grefcoco",
    split_by: str = "unc",
    image_dir: str | Path | None = None,
    strict: bool = True,
    protocol: DatasetProtocol | None = None,
    refs_file: str | None = None,
    images_subdir: str | None = None,
    task: str = "gres",
) -> RefsDataset:
    """Open ``<root>/<dataset>/grefs(<split_by>).json`` + ``instances.json``; one record per sentence."""
    refs_name = refs_file or f"grefs({split_by}).json"
    data_root, ds_dir = find_root_and_dir(root, dataset, "grefs(*).json")
    refs_path = ds_dir / refs_name
    if not refs_path.is_file():
        raise DataError(f"{refs_path}: grefs file not found ({describe_refs_file(ds_dir, 'grefs(*).json')})")
    inst_path = ds_dir / "instances.json"
    if not inst_path.is_file():
        raise DataError(f"{inst_path}: instances file not found (expected next to {refs_name})")
    bad = Collector(strict)
    builder = read_grefs_json(refs_path, split, bad)
    keep_anns, keep_images = needed_ids(builder)
    instances = CocoInstances.load(inst_path, keep_anns, keep_images, bad)
    candidates = [data_root / images_subdir] if images_subdir is not None else image_candidates(data_root)
    return RefsDataset(
        builder=builder,
        instances=instances,
        image_dirs=candidates,
        image_dir=Path(image_dir) if image_dir else None,
        root=data_root,
        name=name,
        split=split,
        protocol=protocol or GREFCOCO,
        task=task,
        layout="grefcoco",
        strict=strict,
    )


register_dataset(
    "grefcoco",
    layout="grefcoco",
    opener=open_grefcoco,
    detect=lambda root: (root / "grefcoco" / "grefs(unc).json").is_file(),
    description="gRefCOCO: multi-target and no-target expressions, UNC splits (ReLA layout)",
    protocol=GREFCOCO,
)
