"""COCO / VOC loaders, registration and the builtin catalog (detectron2's dict format and names)."""

import json
import os
import sys

import pytest
from helpers import write_voc

from resnet_backbones.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from resnet_backbones.data.datasets import (
    COCO_CATEGORIES,
    VOC_CLASSES,
    load_coco_json,
    load_voc_instances,
    register_coco_instances,
    register_pascal_voc,
)
from resnet_backbones.structures import BoxMode


def write_coco(path, images, annotations, categories):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


def small_coco(tmp_path):
    images = [
        {"id": 7, "file_name": "b.jpg", "height": 40, "width": 60},
        {"id": 3, "file_name": "a.jpg", "height": 30, "width": 50},
    ]
    anns = [
        {
            "id": 1,
            "image_id": 3,
            "category_id": 18,
            "bbox": [1.0, 2.0, 10.0, 20.0],
            "iscrowd": 0,
            "area": 200,
        },
        {
            "id": 2,
            "image_id": 7,
            "category_id": 1,
            "bbox": [5.0, 5.0, 30.0, 30.0],
            "iscrowd": 1,
            "area": 900,
        },
        {
            "id": 3,
            "image_id": 7,
            "category_id": 90,
            "bbox": [0.0, 0.0, 60.0, 40.0],
            "iscrowd": 0,
            "area": 2400,
        },
    ]
    cats = [
        {"id": 90, "name": "toothbrush"},
        {"id": 1, "name": "person"},
        {"id": 18, "name": "dog"},
    ]
    return write_coco(tmp_path / "ann.json", images, anns, cats)


def test_load_coco_json_gives_detectron2_dicts_with_contiguous_ids(tmp_path, unregister):
    unregister.append("t_coco_small")
    dicts = load_coco_json(small_coco(tmp_path), tmp_path / "imgs", "t_coco_small")
    assert [d["image_id"] for d in dicts] == [3, 7]  # sorted by id
    d = dicts[0]
    assert d["file_name"] == os.path.join(str(tmp_path / "imgs"), "a.jpg")
    assert (d["height"], d["width"]) == (30, 50)
    assert d["annotations"] == [
        {
            "iscrowd": 0,
            "bbox": [1.0, 2.0, 10.0, 20.0],
            "category_id": 1,
            "bbox_mode": BoxMode.XYWH_ABS,
        }
    ]
    assert [a["category_id"] for a in dicts[1]["annotations"]] == [0, 2]  # ids 1, 90 -> 0, 2
    assert dicts[1]["annotations"][0]["iscrowd"] == 1
    meta = MetadataCatalog.get("t_coco_small")
    assert meta.thing_classes == ["person", "dog", "toothbrush"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 18: 1, 90: 2}


def test_load_coco_json_without_name_keeps_json_ids(tmp_path):
    dicts = load_coco_json(small_coco(tmp_path), tmp_path)
    assert [a["category_id"] for a in dicts[1]["annotations"]] == [1, 90]


def test_register_coco_instances_is_lazy_and_sets_metadata(tmp_path, unregister):
    unregister.append("t_coco_reg")
    json_file = tmp_path / "later.json"
    register_coco_instances(
        "t_coco_reg", {"extra": 1}, json_file, tmp_path
    )  # file does not exist yet
    meta = MetadataCatalog.get("t_coco_reg")
    assert (meta.json_file, meta.image_root, meta.evaluator_type, meta.extra) == (
        str(json_file),
        str(tmp_path),
        "coco",
        1,
    )
    small_coco(tmp_path).rename(json_file)
    assert len(DatasetCatalog.get("t_coco_reg")) == 2


def test_load_voc_converts_one_based_boxes_and_keeps_difficult(tmp_path):
    root = write_voc(
        tmp_path / "VOC2007",
        {
            "000001": [("dog", (1, 1, 50, 40), 0), ("person", (10, 5, 20, 30), 1)],
            "000002": [],
        },
        split="trainval",
        size=(50, 40),
    )
    dicts = load_voc_instances(root, "trainval", VOC_CLASSES)
    assert [d["image_id"] for d in dicts] == ["000001", "000002"]
    d = dicts[0]
    assert d["file_name"] == os.path.join(str(root), "JPEGImages", "000001.jpg")
    assert (d["width"], d["height"]) == (50, 40)
    dog, person = d["annotations"]
    assert dog["bbox"] == [0.0, 0.0, 50.0, 40.0]  # (1, W) covers the whole image: (0, W)
    assert person["bbox"] == [9.0, 4.0, 20.0, 30.0]
    assert (dog["category_id"], person["category_id"]) == (
        VOC_CLASSES.index("dog"),
        VOC_CLASSES.index("person"),
    )
    assert (dog["difficult"], person["difficult"]) == (0, 1)
    assert dog["bbox_mode"] == BoxMode.XYXY_ABS
    assert dicts[1]["annotations"] == []


def test_register_pascal_voc_metadata(tmp_path, unregister):
    unregister.append("t_voc_reg")
    register_pascal_voc("t_voc_reg", tmp_path / "VOC2012", "val", 2012)
    meta = MetadataCatalog.get("t_voc_reg")
    assert (meta.dirname, meta.split, meta.year, meta.evaluator_type) == (
        str(tmp_path / "VOC2012"),
        "val",
        2012,
        "pascal_voc",
    )
    assert meta.thing_classes == list(VOC_CLASSES)


BUILTIN = [
    "coco_2017_train",
    "coco_2017_val",
    "coco_2014_train",
    "coco_2014_minival",
    "coco_2014_valminusminival",
    "voc_2007_trainval",
    "voc_2007_test",
    "voc_2012_trainval",
    "shapes_train",
    "shapes_val",
]


def test_builtin_names_and_metadata():
    for name in BUILTIN:
        assert name in DatasetCatalog, name
    coco = MetadataCatalog.get("coco_2017_train")
    assert (
        len(coco.thing_classes) == 80
        and coco.thing_classes[0] == "person"
        and coco.thing_classes[-1] == "toothbrush"
    )
    assert coco.thing_dataset_id_to_contiguous_id[90] == 79 and len(COCO_CATEGORIES) == 80
    assert coco.json_file.endswith(os.path.join("coco", "annotations", "instances_train2017.json"))
    assert coco.image_root.endswith(os.path.join("coco", "train2017"))
    assert MetadataCatalog.get("coco_2014_minival").image_root.endswith(
        os.path.join("coco", "val2014")
    )
    voc = MetadataCatalog.get("voc_2007_test")
    assert (voc.split, voc.year, voc.evaluator_type) == ("test", 2007, "pascal_voc")
    assert voc.dirname.endswith("VOC2007")
    shapes = MetadataCatalog.get("shapes_val")
    assert shapes.json_file.endswith(os.path.join("shapes", "annotations", "instances_val.json"))
    assert shapes.image_root.endswith(os.path.join("shapes", "val"))
    assert (
        shapes.thing_classes == ["circle", "rectangle", "triangle"]
        and shapes.evaluator_type == "coco"
    )


# (root, touched list) while a test watches file access; the audit hook cannot be removed
_WATCHED = []


def _audit(event, args):
    if _WATCHED and event in ("open", "os.listdir", "os.scandir") and args:
        root, touched = _WATCHED[-1]
        if str(args[0]).startswith(root):
            touched.append((event, args[0]))


sys.addaudithook(_audit)


def test_builtin_registration_reads_no_file_and_honours_rb_datasets(tmp_path, monkeypatch):
    """What ``import resnet_backbones.data`` runs, on empty catalogs: no file under the root is
    touched."""
    from resnet_backbones.data.datasets import builtin

    root = str(tmp_path / "root")
    monkeypatch.setenv("RB_DATASETS", root)
    monkeypatch.setattr(DatasetCatalog, "data", {})
    monkeypatch.setattr(MetadataCatalog, "data", {})
    touched = []
    real_stat = os.stat

    def stat(
        path, *args, **kwargs
    ):  # existence checks (os.path.exists/isfile) raise no audit event
        if str(path).startswith(root):
            touched.append(("os.stat", path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    _WATCHED.append((root, touched))
    try:
        builtin.register_all()
        for name in BUILTIN:
            MetadataCatalog.get(name)
    finally:
        _WATCHED.pop()
        monkeypatch.setattr(os, "stat", real_stat)
    assert touched == []
    assert set(BUILTIN) <= set(DatasetCatalog.list())
    assert MetadataCatalog.get("voc_2012_trainval").dirname == os.path.join(root, "VOC2012")
    assert MetadataCatalog.get("coco_2017_val").json_file == os.path.join(
        root, "coco/annotations/instances_val2017.json"
    )
    with pytest.raises(FileNotFoundError, match="instances_val2017.json"):
        DatasetCatalog.get("coco_2017_val")


def test_several_datasets_concatenate(tmp_path, unregister):
    unregister.extend(["t_cat_a", "t_cat_b"])
    register_coco_instances("t_cat_a", {}, small_coco(tmp_path / "a"), tmp_path)
    register_coco_instances("t_cat_b", {}, small_coco(tmp_path / "b"), tmp_path)
    dicts = get_detection_dataset_dicts(["t_cat_a", "t_cat_b"], filter_empty=False)
    assert len(dicts) == 4


def test_load_coco_json_parses_once_with_the_gc_paused(tmp_path, monkeypatch):
    """What keeps load_coco_json within 1.5x of pycocotools' COCO(json) (the time itself is
    measured by ``tools/benchmark.py data``): the json is parsed once, parsing and conversion run
    with the cyclic GC paused, and the GC is left as the caller had it, also after an error."""
    import gc

    from pycocotools import coco as pycocotools_coco

    from resnet_backbones.benchmarks.data import write_synthetic_coco
    from resnet_backbones.data.datasets import coco as coco_module

    path = write_synthetic_coco(tmp_path / "synthetic.json", num_images=20, num_anns=150)
    gc_enabled = []  # gc.isenabled() in each COCO(json) and in each conversion
    real_init, real_convert = pycocotools_coco.COCO.__init__, coco_module._convert

    def init(self, *args, **kwargs):
        gc_enabled.append(("parse", gc.isenabled()))
        real_init(self, *args, **kwargs)

    def convert(*args, **kwargs):
        gc_enabled.append(("convert", gc.isenabled()))
        return real_convert(*args, **kwargs)

    monkeypatch.setattr(pycocotools_coco.COCO, "__init__", init)
    monkeypatch.setattr(coco_module, "_convert", convert)
    assert gc.isenabled()
    dicts = load_coco_json(path, tmp_path, on_bad_annotation="error")
    assert gc_enabled == [("parse", False), ("convert", False)] and gc.isenabled()
    assert len(dicts) == 20 and sum(len(d["annotations"]) for d in dicts) == 150

    gc.disable()
    try:
        assert len(load_coco_json(path, tmp_path)) == 20
        assert not gc.isenabled()  # not switched on behind the caller's back
    finally:
        gc.enable()
    (tmp_path / "truncated.json").write_text(path.read_text()[:1000])
    with pytest.raises(ValueError, match="malformed JSON"):
        load_coco_json(tmp_path / "truncated.json", tmp_path)
    assert gc.isenabled()
