"""Lazy index: how long a RefCOCO-size refer-layout dataset takes to open, and how much memory it needs.

    .venv/bin/python benchmarks/bench_index.py                  # RefCOCO size: 142,210 expressions
    .venv/bin/python benchmarks/bench_index.py --expressions 20000 --keep /tmp/refer-index

Generates, in a temporary directory, what the refer toolkit's RefCOCO holds (no images are needed: sizes
come from instances.json): ``refcoco/refs(unc).p`` written the way Python 2 wrote it (byte strings, a few
UTF-8 sentences, so the loader takes its latin1 path) with 50,000 refs and 142,210 sentences over 19,994
images, and ``refcoco/instances.json`` with every object of those images (196,771 annotations with COCO-like
polygons). Then, in a fresh process each (``torch.set_num_threads(1)``), it times
``open_dataset(root, "refcoco", split)`` and reads the peak RSS, and builds records / decodes masks.

The bar (issue 5): opening the 142k-expression index takes < 10 s and < 1 GiB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# RefCOCO (unc) as the refer toolkit ships it.
REFCOCO = {"images": 19_994, "annotations": 196_771, "refs": 50_000, "expressions": 142_210}
SPLITS = (("train", 0.848), ("val", 0.076), ("testA", 0.040), ("testB", 0.036))  # shares of refs (sum 1)


def py2_pickle(obj: object) -> bytes:
    """Protocol-2 pickle as Python 2's cPickle writes lists/dicts/str/int: ``str`` as byte strings."""
    out = bytearray(b"\x80\x02")

    def w(o: object) -> None:
        if isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.extend(b"K" + bytes([o]) if 0 <= o < 256 else b"J" + struct.pack("<i", o))
        elif isinstance(o, str):
            b = o.encode("utf-8")
            out.extend((b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b)
        elif isinstance(o, list):
            out.extend(b"]")
            if o:
                out.extend(b"(")
                for x in o:
                    w(x)
                out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                w(k)
                w(v)
            out.extend(b"u")
        else:
            raise TypeError(type(o))

    w(obj)
    out.extend(b".")
    return bytes(out)


def generate(root: Path, n_expr: int, seed: int = 0) -> dict[str, float]:
    """Write a refer-layout RefCOCO-shaped dataset with ``n_expr`` expressions under ``root``."""
    scale = n_expr / REFCOCO["expressions"]
    n_img = max(1, round(REFCOCO["images"] * scale))
    n_ann = max(n_img, round(REFCOCO["annotations"] * scale))
    n_ref = max(1, round(REFCOCO["refs"] * scale))
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    ann_image = np.sort(rng.integers(0, n_img, n_ann))
    ann_image[:n_img] = np.arange(n_img)  # every image has an object
    ann_image.sort()
    images = [
        {"license": 1, "file_name": f"COCO_train2014_{i + 1:012d}.jpg", "coco_url": "", "height": 480,
         "width": 640, "date_captured": "2013-11-14 11:18:45", "flickr_url": "", "id": i + 1}
        for i in range(n_img)
    ]  # fmt: skip
    annotations = []
    for a in range(n_ann):
        x, y = rng.uniform(0, 500), rng.uniform(0, 340)
        w, h = rng.uniform(10, 140), rng.uniform(10, 140)
        # about 24 vertices per object, like COCO's polygons; one object in six has two polygons
        polys = []
        for _ in range(2 if a % 6 == 0 else 1):
            ang = np.sort(rng.uniform(0, 2 * np.pi, 24))
            px = x + w / 2 + (w / 2) * np.cos(ang)
            py = y + h / 2 + (h / 2) * np.sin(ang)
            polys.append(np.round(np.stack([px, py], 1).reshape(-1), 2).tolist())
        annotations.append(
            {"segmentation": polys, "area": round(float(np.pi * w * h / 4), 4), "iscrowd": 0,
             "image_id": int(ann_image[a]) + 1, "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
             "category_id": int(rng.integers(1, 91)), "id": a + 1}
        )  # fmt: skip
    categories = [{"supercategory": "thing", "id": c, "name": f"cat{c}"} for c in range(1, 91)]
    ds = root / "refcoco"
    ds.mkdir(parents=True)
    inst = {"info": {"description": "bench"}, "images": images, "licenses": [], "type": "instances"}
    inst.update(annotations=annotations, categories=categories)
    (ds / "instances.json").write_text(json.dumps(inst))
    del annotations, inst
    words = [
        "man",
        "woman",
        "left",
        "right",
        "red",
        "blue",
        "shirt",
        "guy",
        "far",
        "near",
        "the",
        "in",
        "with",
        "on",
        "white",
        "black",
        "small",
        "big",
    ]
    referred = rng.choice(n_ann, n_ref, replace=False) + 1
    per_ref = np.full(n_ref, n_expr // n_ref)
    per_ref[: n_expr - int(per_ref.sum())] += 1
    split_of = rng.choice(len(SPLITS), n_ref, p=[f for _, f in SPLITS])
    refs, sid = [], 0
    for r in range(n_ref):
        split = SPLITS[int(split_of[r])][0]
        aid = int(referred[r])
        sents = []
        for _ in range(int(per_ref[r])):
            text = " ".join(rng.choice(words, int(rng.integers(2, 9))))
            if sid % 10_000 == 9_999:
                text += " café"  # a few UTF-8 byte strings, as in the real pickles
            sents.append({"tokens": text.split(), "raw": text.capitalize(), "sent_id": sid, "sent": text})
            sid += 1
        img = int(ann_image[aid - 1]) + 1
        refs.append(
            {"image_id": img, "split": split, "sentences": sents, "file_name": f"COCO_train2014_{img:012d}_{aid}.jpg",
             "category_id": 1, "ann_id": aid, "sent_ids": [s["sent_id"] for s in sents], "ref_id": r}
        )  # fmt: skip
    (ds / "refs(unc).p").write_bytes(py2_pickle(refs))
    return {
        "images": n_img,
        "annotations": n_ann,
        "refs": n_ref,
        "expressions": sid,
        "instances_mb": round((ds / "instances.json").stat().st_size / 2**20, 1),
        "refs_mb": round((ds / "refs(unc).p").stat().st_size / 2**20, 1),
        "generate_s": round(time.perf_counter() - t0, 1),
    }


CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
import langground.data as D

def hwm_mib():
    # VmHWM: this process's own peak RSS (ru_maxrss would carry the parent's over fork + exec).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

root, split = sys.argv[1], sys.argv[2]
base = hwm_mib()
t = time.perf_counter()
ds = D.open_dataset(root, "refcoco", split)
open_s = time.perf_counter() - t
peak = hwm_mib()
step = max(1, len(ds) // 10000)
t = time.perf_counter()
recs = [ds[i] for i in range(0, len(ds), step)]
rec_us = 1e6 * (time.perf_counter() - t) / len(recs)
t = time.perf_counter()
masks = [r.load_mask() for r in recs[:200]]
mask_ms = 1e3 * (time.perf_counter() - t) / len(masks)
print(json.dumps({"split": split, "records": len(ds), "open_s": round(open_s, 2),
                  "peak_rss_mib": round(peak, 1), "rss_before_open_mib": round(base, 1),
                  "index_cost_mib": round(peak - base, 1), "record_us": round(rec_us, 1),
                  "mask_ms": round(mask_ms, 2), "utf8_from_py2_str": any("café" in r.text for r in ds)}))
"""


def measure(root: Path, split: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), split], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--expressions", type=int, default=REFCOCO["expressions"])
    ap.add_argument("--splits", nargs="+", default=["all", "train", "testA"])
    ap.add_argument("--keep", type=Path, default=None, help="generate here and keep it (else a temp dir)")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-index-"))
    try:
        if not (root / "refcoco" / "refs(unc).p").is_file():
            print(json.dumps({"generated": generate(root, args.expressions)}), flush=True)
        results = [measure(root, s) for s in args.splits]
        for r in results:
            print(json.dumps(r), flush=True)
        full = results[0]
        ok = full["open_s"] < 10 and full["peak_rss_mib"] < 1024
        print(f"bar (open < 10 s, peak RSS < 1 GiB) on split {full['split']!r}: {'PASS' if ok else 'FAIL'}")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
