"""Bad input: a clear error naming the file and value, or (single annotations, default "skip") a
load-time warning with the counts; DATALOADER.ON_BAD_ANNOTATION switches to errors."""

import json
import logging

import cv2
import numpy as np
import pytest

from resnet_backbones.config import get_cfg
from resnet_backbones.data import (
    DataLoadError,
    DatasetCatalog,
    MetadataCatalog,
    build_detection_train_loader,
    get_detection_dataset_dicts,
    register_coco_instances,
    register_pascal_voc,
)
from resnet_backbones.data.datasets import BadAnnotationError, load_coco_json, load_voc_instances
from resnet_backbones.data.detection_utils import (
    ImageReadError,
    SizeMismatchError,
    check_image_size,
    read_image,
)

CATS = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def coco_file(tmp_path, anns, images=None, name="ann.json"):
    images = (
        images
        if images is not None
        else [{"id": 1, "file_name": "x.png", "height": 20, "width": 30}]
    )
    path = tmp_path / name
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATS}))
    return path


def ann(i, bbox, cat=1):
    return {"id": i, "image_id": 1, "category_id": cat, "bbox": bbox, "iscrowd": 0}


BAD_COCO = [
    ann(1, [1, 1, 5, 5]),  # fine
    ann(2, [3, 3, 0, 5]),  # zero width
    ann(3, [3, 3, 4, -2]),  # negative height
    ann(4, [40, 2, 5, 5]),  # outside the 30x20 image
    ann(5, [25, 2, 10, 5]),  # sticks out by 5 px
    ann(6, [1, 1, 5, 5], cat=7),  # unknown category id
    ann(7, [1, 1, 5]),  # malformed bbox
]


def test_coco_bad_annotations_are_skipped_and_counted(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        dicts = load_coco_json(coco_file(tmp_path, BAD_COCO), tmp_path, on_bad_annotation="skip")
    assert [a["bbox"] for a in dicts[0]["annotations"]] == [[1, 1, 5, 5]]
    msg = caplog.text
    assert "ann.json" in msg and "skipped 6 of 7 annotations" in msg
    for part in (
        "2 empty box",
        "2 box outside the image",
        "1 unknown category id",
        "1 malformed bbox",
    ):
        assert part in msg, part


@pytest.mark.parametrize(
    "bad,needle",
    [
        (ann(2, [3, 3, 0, 5]), "empty box.*annotation id 2.*bbox=\\[3, 3, 0, 5\\]"),
        (ann(2, [40, 2, 5, 5]), "box outside the image.*30x20.*bbox=\\[40, 2, 5, 5\\]"),
        (ann(2, [1, 1, 5, 5], cat=7), "unknown category id.*category_id=7"),
    ],
)
def test_coco_bad_annotation_raises_under_error_policy(tmp_path, bad, needle):
    path = coco_file(tmp_path, [ann(1, [1, 1, 5, 5]), bad])
    with pytest.raises(BadAnnotationError, match="ann.json: " + needle):
        load_coco_json(path, tmp_path, on_bad_annotation="error")


def test_config_switch_reaches_registered_loaders(tmp_path):
    register_coco_instances("t_bad_switch", {}, coco_file(tmp_path, BAD_COCO), tmp_path)
    try:
        cfg = get_cfg()
        assert cfg.DATALOADER.ON_BAD_ANNOTATION == "skip"
        assert (
            len(
                get_detection_dataset_dicts("t_bad_switch", on_bad_annotation="skip")[0][
                    "annotations"
                ]
            )
            == 1
        )
        cfg.DATALOADER.ON_BAD_ANNOTATION = "error"
        cfg.DATASETS.TRAIN = ("t_bad_switch",)
        with pytest.raises(BadAnnotationError, match="ann.json"):
            build_detection_train_loader(cfg)
        with pytest.raises(ValueError, match="ON_BAD_ANNOTATION"):
            get_detection_dataset_dicts("t_bad_switch", on_bad_annotation="ignore")
    finally:
        DatasetCatalog.pop("t_bad_switch")
        MetadataCatalog.pop("t_bad_switch")


@pytest.mark.parametrize(
    "text,needle",
    [
        ('{"images": [', "malformed JSON"),
        ("[1, 2]", "not a COCO instances file"),
        ('{"annotations": []}', "no 'images'"),
    ],
)
def test_malformed_json_names_the_file(tmp_path, text, needle):
    (tmp_path / "broken.json").write_text(text)
    with pytest.raises(ValueError, match=f"broken.json.*{needle}|{needle}.*broken.json"):
        load_coco_json(tmp_path / "broken.json", tmp_path)


def test_missing_json_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.json.*check_layout"):
        load_coco_json(tmp_path / "nothere.json", tmp_path)


def voc_tree(tmp_path, xml_body, ids=("a",)):
    for d in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    (tmp_path / "ImageSets/Main/train.txt").write_text("".join(f"{i}\n" for i in ids))
    for i in ids:
        (tmp_path / "Annotations" / f"{i}.xml").write_text(xml_body)
    return tmp_path


def voc_obj(name, x0, y0, x1, y1):
    return (
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
    )


def test_voc_bad_objects_skipped_counted_or_raised(tmp_path, caplog):
    body = (
        "<annotation><size><width>30</width><height>20</height></size>"
        + voc_obj("dog", 1, 1, 10, 10)
        + voc_obj("unicorn", 1, 1, 10, 10)
        + voc_obj("dog", 5, 5, 4, 10)
        + voc_obj("dog", 1, 1, 60, 10)
        + voc_obj("dog", "x", 1, 3, 3)
        + "</annotation>"
    )
    root = voc_tree(tmp_path, body)
    with caplog.at_level(logging.WARNING):
        dicts = load_voc_instances(root, "train", ["dog", "cat"], on_bad_annotation="skip")
    assert [a["bbox"] for a in dicts[0]["annotations"]] == [[0.0, 0.0, 10.0, 10.0]]
    assert "skipped 4 of 5 annotations" in caplog.text and "unicorn" in caplog.text
    with pytest.raises(BadAnnotationError, match=r"a\.xml: <name>unicorn</name>"):
        load_voc_instances(root, "train", ["dog", "cat"], on_bad_annotation="error")


@pytest.mark.parametrize(
    "body,needle",
    [
        ("<annotation><size><width>30</width>", "malformed XML"),
        ("<annotation><size><width>30</width><height>h</height></size></annotation>", "height='h'"),
    ],
)
def test_malformed_xml_names_the_file(tmp_path, body, needle):
    root = voc_tree(tmp_path, body)
    with pytest.raises(ValueError, match=rf"a\.xml: .*{needle}"):
        load_voc_instances(root, "train", ["dog"])


def test_missing_voc_files_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/train\.txt"):
        load_voc_instances(tmp_path, "train", ["dog"])
    root = voc_tree(tmp_path, "<annotation/>", ids=())
    (root / "ImageSets/Main/train.txt").write_text("b\n")
    with pytest.raises(FileNotFoundError, match=r"b\.xml"):
        load_voc_instances(root, "train", ["dog"])


def test_empty_dataset_is_an_error(tmp_path):
    register_coco_instances("t_empty", {}, coco_file(tmp_path, [], images=[]), tmp_path)
    register_pascal_voc(
        "t_empty_voc", voc_tree(tmp_path / "voc", "<annotation/>", ids=()), "train", 2012, ["dog"]
    )
    register_coco_instances("t_no_boxes", {}, coco_file(tmp_path, [], name="nobox.json"), tmp_path)
    try:
        with pytest.raises(ValueError, match="dataset 't_empty' is empty.*ann.json"):
            get_detection_dataset_dicts("t_empty")
        with pytest.raises(ValueError, match="dataset 't_empty_voc' is empty"):
            get_detection_dataset_dicts("t_empty_voc")
        with pytest.raises(ValueError, match="no image of.*t_no_boxes.*FILTER_EMPTY_ANNOTATIONS"):
            get_detection_dataset_dicts("t_no_boxes", filter_empty=True)
        with pytest.raises(ValueError, match="empty"):
            get_detection_dataset_dicts([])
    finally:
        for n in ("t_empty", "t_empty_voc", "t_no_boxes"):
            DatasetCatalog.pop(n)
            MetadataCatalog.pop(n)


def test_missing_corrupt_and_wrong_size_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.png"):
        read_image(str(tmp_path / "gone.png"), "BGR")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageReadError, match="cannot decode image .*bad.jpg"):
        read_image(str(tmp_path / "bad.jpg"), "BGR")
    ok = np.zeros((10, 12, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "trunc.jpg"), ok)
    data = (tmp_path / "trunc.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="trunc.jpg"):
        read_image(str(tmp_path / "trunc.jpg"), "BGR")
    with pytest.raises(
        SizeMismatchError, match=r"ok.png: image is 12x10 \(WxH\) but its annotation says 12x11"
    ):
        check_image_size({"file_name": "ok.png", "width": 12, "height": 11}, ok)
    with pytest.raises(SizeMismatchError, match="swapped"):
        check_image_size({"file_name": "ok.png", "width": 10, "height": 12}, ok)


@pytest.mark.parametrize("case", ["missing", "corrupt", "size"])
def test_loader_names_the_bad_image_file(tmp_path, case):
    cv2.imwrite(str(tmp_path / "good.png"), np.zeros((20, 30, 3), np.uint8))
    (tmp_path / "corrupt.png").write_bytes(b"garbage")
    file_name, height = {
        "missing": ("missing.png", 20),
        "corrupt": ("corrupt.png", 20),
        "size": ("good.png", 21),
    }[case]
    dicts = [
        {
            "file_name": str(tmp_path / file_name),
            "height": height,
            "width": 30,
            "image_id": 9,
            "annotations": [{"bbox": [1, 1, 5, 5], "bbox_mode": 1, "category_id": 0, "iscrowd": 0}],
        }
    ]
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (20,)
    cfg.SOLVER.IMS_PER_BATCH = 1
    cfg.SEED = 0
    cfg.DATALOADER.NUM_WORKERS = 1 if case == "corrupt" else 0
    with pytest.raises(DataLoadError, match=f"{file_name}.*image_id=9") as info:
        next(iter(build_detection_train_loader(cfg, dataset=dicts)))
    assert "Traceback" not in str(info.value)
    assert {
        "missing": "FileNotFoundError",
        "corrupt": "ImageReadError",
        "size": "SizeMismatchError",
    }[case] in str(info.value)


def test_malformed_json_names_the_line(tmp_path):
    (tmp_path / "broken.json").write_text('{\n  "images": [],\n  "annotations": [,]\n}\n')
    with pytest.raises(ValueError) as info:
        load_coco_json(tmp_path / "broken.json", tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'broken.json'}: malformed JSON: ")
    assert "line 3 column" in str(info.value)


@pytest.mark.parametrize("fmt", ["BGR", "RGB"])
def test_grayscale_and_cmyk_images_are_read_as_three_channels(tmp_path, fmt):
    from PIL import Image

    Image.new("L", (30, 20), 77).save(tmp_path / "gray.png")
    Image.new("CMYK", (30, 20), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # pure red
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    gray = read_image(str(tmp_path / "gray.png"), fmt)
    assert gray.shape == (20, 30, 3) and gray.dtype == np.uint8 and (gray == 77).all()
    red = read_image(str(tmp_path / "cmyk.jpg"), fmt)
    assert red.shape == (20, 30, 3)
    expected = [0, 0, 255] if fmt == "BGR" else [255, 0, 0]
    assert np.abs(red.astype(int) - expected).max() <= 2  # JPEG rounding
