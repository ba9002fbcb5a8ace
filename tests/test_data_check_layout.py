"""datasets/check_layout.py lists exactly what is missing and exits 1, else prints OK
and exits 0."""

import importlib.util
import json
from pathlib import Path

import pytest
from helpers import write_voc

from resnet_backbones.data import register_coco_instances, register_pascal_voc

SCRIPT = Path(__file__).resolve().parents[1] / "datasets" / "check_layout.py"


@pytest.fixture(scope="module")
def check_layout():
    spec = importlib.util.spec_from_file_location("check_layout", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_coco_layout(tmp_path, check_layout, unregister, capsys):
    unregister.append("t_layout_coco")
    register_coco_instances("t_layout_coco", {}, tmp_path / "ann.json", tmp_path / "imgs")
    assert check_layout.main(["t_layout_coco"]) == 1
    out = capsys.readouterr().out
    assert f"missing annotation file: {tmp_path / 'ann.json'}" in out
    assert f"missing image directory: {tmp_path / 'imgs'}" in out
    assert "cocodataset.org" in out
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(b"x")
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}]
    (tmp_path / "ann.json").write_text(
        json.dumps({"images": images, "annotations": [], "categories": []})
    )
    assert check_layout.main(["t_layout_coco"]) == 1
    out = capsys.readouterr().out
    assert f"missing image: {tmp_path / 'imgs' / 'b.jpg'}" in out and "a.jpg" not in out
    assert check_layout.main(["--quick", "t_layout_coco"]) == 0
    (tmp_path / "imgs" / "b.jpg").write_bytes(b"x")
    assert check_layout.main(["t_layout_coco"]) == 0
    assert "OK       t_layout_coco" in capsys.readouterr().out


def test_voc_layout_and_unknown_name(tmp_path, check_layout, unregister, capsys):
    unregister.append("t_layout_voc")
    register_pascal_voc("t_layout_voc", tmp_path / "VOC2007", "test", 2007)
    assert check_layout.main(["t_layout_voc"]) == 1
    out = capsys.readouterr().out
    for d in ("Annotations", "ImageSets/Main", "JPEGImages"):
        assert f"missing directory: {tmp_path / 'VOC2007' / d}" in out
    assert f"missing split file: {tmp_path / 'VOC2007' / 'ImageSets' / 'Main' / 'test.txt'}" in out
    write_voc(tmp_path / "VOC2007", {"000001": []})  # the folders, test.txt, no image
    assert check_layout.main(["t_layout_voc"]) == 1
    assert (
        f"missing image: {tmp_path / 'VOC2007' / 'JPEGImages' / '000001.jpg'}"
        in capsys.readouterr().out
    )
    assert check_layout.main(["no_such_dataset"]) == 2
    assert "unknown dataset name(s): no_such_dataset" in capsys.readouterr().out
