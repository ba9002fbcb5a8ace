#!/usr/bin/env python
"""Check that registered datasets are on disk where their registration says; print what is missing.

    python datasets/check_layout.py coco_2017_train coco_2017_val voc_2007_test shapes_train
    python datasets/check_layout.py --root /data/datasets --quick voc_2012_trainval

The builtin names live under ``$RB_DATASETS`` (default ``./datasets``; ``--root`` overrides it).
Exit code 0: everything present; 1: something missing or unreadable; 2: an unknown dataset name.
Without ``--quick`` every image (and VOC xml) the annotations list is checked too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

MAX_LISTED = 20  # missing files printed per dataset; the rest are counted

HINTS = {
    "coco": "COCO: see datasets/README.md, section 'COCO' (https://cocodataset.org/#download)",
    "pascal_voc": "PASCAL VOC: see datasets/README.md, section 'PASCAL VOC'",
    "shapes": "shapes: generate it with `python datasets/prepare_shapes.py --output {root}`",
}


def _missing_files(paths: List[str]) -> List[str]:
    return [p for p in paths if not os.path.isfile(p)]


def check_coco(meta, quick: bool) -> List[str]:
    """Missing pieces of a COCO-format dataset: json file, image directory, listed images."""
    json_file, image_root = meta.json_file, meta.image_root
    problems = []
    if not os.path.isfile(json_file):
        problems.append(f"missing annotation file: {json_file}")
    if not os.path.isdir(image_root):
        problems.append(f"missing image directory: {image_root}")
    if problems or quick:
        return problems
    try:
        with open(json_file) as f:
            images = json.load(f).get("images", [])
        files = [os.path.join(image_root, img["file_name"]) for img in images]
    except (ValueError, AttributeError, KeyError, TypeError) as e:
        return [f"unreadable annotation file: {json_file} ({type(e).__name__}: {e})"]
    return [f"missing image: {p}" for p in _missing_files(files)]


def check_voc(meta, quick: bool) -> List[str]:
    """Missing pieces of a VOC-layout dataset: directories, split file, listed xml and jpg files."""
    dirname = meta.dirname
    problems = [
        f"missing directory: {os.path.join(dirname, d)}"
        for d in ("Annotations", "ImageSets/Main", "JPEGImages")
        if not os.path.isdir(os.path.join(dirname, d))
    ]
    split_file = os.path.join(dirname, "ImageSets", "Main", f"{meta.split}.txt")
    if not os.path.isfile(split_file):
        problems.append(f"missing split file: {split_file}")
    if problems or quick:
        return problems
    with open(split_file) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    xmls = [os.path.join(dirname, "Annotations", i + ".xml") for i in ids]
    jpgs = [os.path.join(dirname, "JPEGImages", i + ".jpg") for i in ids]
    return [f"missing annotation: {p}" for p in _missing_files(xmls)] + [
        f"missing image: {p}" for p in _missing_files(jpgs)
    ]


def check_dataset(name: str, quick: bool = False) -> List[str]:
    """What is missing for registered dataset ``name`` (empty list: nothing)."""
    from resnet_backbones.data import MetadataCatalog

    meta = MetadataCatalog.get(name)
    kind = meta.get("evaluator_type")
    if kind == "coco" and meta.get("json_file"):
        return check_coco(meta, quick)
    if kind == "pascal_voc" and meta.get("dirname"):
        return check_voc(meta, quick)
    return [f"cannot check '{name}': its metadata has neither json_file (COCO) nor dirname (VOC)"]


def _hint(name: str, meta, root: str) -> str:
    if name.startswith("shapes"):
        return HINTS["shapes"].format(root=os.path.join(root, "shapes"))
    return HINTS.get(meta.get("evaluator_type", ""), "see datasets/README.md")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="+", help="registered dataset names")
    p.add_argument(
        "--root", help="dataset root (sets $RB_DATASETS before the builtin names are registered)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="check directories and annotation files only, not every image",
    )
    args = p.parse_args(argv)
    if args.root:
        os.environ["RB_DATASETS"] = args.root
    from resnet_backbones.data import DatasetCatalog, MetadataCatalog
    from resnet_backbones.data.datasets.builtin import default_root

    unknown = [n for n in args.names if n not in DatasetCatalog]
    if unknown:
        print(
            f"unknown dataset name(s): {', '.join(unknown)}\n"
            f"registered: {', '.join(sorted(DatasetCatalog.list()))}"
        )
        return 2
    status = 0
    for name in args.names:
        problems = check_dataset(name, args.quick)
        if not problems:
            print(f"OK       {name}")
            continue
        status = 1
        print(f"MISSING  {name}: {len(problems)} problem(s)")
        for line in problems[:MAX_LISTED]:
            print(f"    {line}")
        if len(problems) > MAX_LISTED:
            print(f"    ... and {len(problems) - MAX_LISTED} more")
        print(f"    -> {_hint(name, MetadataCatalog.get(name), default_root())}")
    return status


if __name__ == "__main__":
    sys.exit(main())
