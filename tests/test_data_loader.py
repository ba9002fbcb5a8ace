"""Train/test loaders: batches of dicts, reproducible across worker counts, per-rank batch size."""

import itertools
import json

import cv2
import numpy as np
import pytest

import resnet_backbones.data.build as build_mod
import resnet_backbones.data.samplers as samplers_mod
from resnet_backbones.config import get_cfg
from resnet_backbones.data import (
    DataLoadError,
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
    register_coco_instances,
)

SIZES = [(20, 30), (30, 20), (24, 24), (18, 34), (34, 18), (22, 28), (28, 22), (26, 20)]  # (h, w)


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    """8 small PNGs (landscape and portrait), one image without boxes, registered as 't_loader'."""
    root = tmp_path_factory.mktemp("tiny_coco")
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i, (h, w) in enumerate(SIZES):
        cv2.imwrite(str(root / f"{i}.png"), rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8))
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": h, "width": w})
        if i != 5:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": 1 + i % 2,
                    "bbox": [1.0, 2.0, w / 2, h / 3],
                    "iscrowd": 0,
                }
            )
    (root / "ann.json").write_text(
        json.dumps(
            {
                "images": images,
                "annotations": anns,
                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            }
        )
    )
    register_coco_instances("t_loader", {}, root / "ann.json", root)
    yield root
    DatasetCatalog.pop("t_loader")
    MetadataCatalog.pop("t_loader")


def cfg_for(workers=0, batch=2, seed=5, grouping=True):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = ("t_loader",)
    cfg.INPUT.MIN_SIZE_TRAIN = (16, 40)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "range"
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.INPUT.MIN_SIZE_TEST = 20
    cfg.INPUT.MAX_SIZE_TEST = 64
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = grouping
    cfg.SOLVER.IMS_PER_BATCH = batch
    cfg.SEED = seed
    return cfg


def summarize(batches):
    return [
        [
            (
                d["file_name"],
                tuple(d["image"].shape),
                int(d["image"].sum()),
                d["instances"].gt_boxes.tensor.tolist(),
            )
            for d in b
        ]
        for b in batches
    ]


def test_train_batches_are_lists_of_dicts_and_grouped(tiny_coco):
    batches = list(itertools.islice(iter(build_detection_train_loader(cfg_for())), 6))
    for b in batches:
        assert isinstance(b, list) and len(b) == 2
        assert len({d["width"] > d["height"] for d in b}) == 1
        for d in b:
            assert set(d) >= {"file_name", "image_id", "height", "width", "image", "instances"}
            assert min(d["image"].shape[1:]) in range(16, 41)
    names = {d["file_name"] for b in batches for d in b}
    assert not any(
        n.endswith("/5.png") for n in names
    )  # FILTER_EMPTY_ANNOTATIONS dropped the empty image


def test_same_batches_with_0_and_2_workers_and_same_seed(tiny_coco):
    def run(workers, seed=5, grouping=True):
        return summarize(
            itertools.islice(
                iter(build_detection_train_loader(cfg_for(workers, seed=seed, grouping=grouping))),
                5,
            )
        )

    zero = run(0)
    assert zero == run(2)
    assert zero == run(0)
    assert zero != run(0, seed=6)
    assert run(0, grouping=False) == run(2, grouping=False)


def test_main_process_rng_is_left_alone_with_0_workers(tiny_coco):
    import random

    import torch

    np.random.seed(1)
    random.seed(1)
    torch.manual_seed(1)
    before = np.random.get_state()[1].copy(), random.getstate(), torch.get_rng_state()
    list(itertools.islice(iter(build_detection_train_loader(cfg_for(0))), 3))
    assert np.array_equal(np.random.get_state()[1], before[0])
    assert random.getstate() == before[1]
    assert torch.equal(torch.get_rng_state(), before[2])


@pytest.mark.parametrize("grouping,workers", [(True, 0), (True, 2), (False, 0)])
def test_skip_batches_resumes_exactly(tiny_coco, grouping, workers):
    fresh = summarize(
        itertools.islice(iter(build_detection_train_loader(cfg_for(0, grouping=grouping))), 9)
    )
    loader = build_detection_train_loader(cfg_for(workers, grouping=grouping))
    loader.skip_batches(5)
    assert summarize(itertools.islice(iter(loader), 4)) == fresh[5:]
    loader.skip_batches(0)
    assert summarize(itertools.islice(iter(loader), 2)) == fresh[:2]


def test_skip_batches_without_sizes_loads_the_skipped_batches(tiny_coco):
    dicts = get_detection_dataset_dicts("t_loader")
    for d in dicts:
        del d["width"], d["height"]
    fresh = summarize(
        itertools.islice(iter(build_detection_train_loader(cfg_for(), dataset=dicts)), 5)
    )
    loader = build_detection_train_loader(cfg_for(), dataset=dicts)
    loader.skip_batches(3)
    assert summarize(itertools.islice(iter(loader), 2)) == fresh[3:]


def test_ims_per_batch_is_global(tiny_coco, monkeypatch):
    monkeypatch.setattr(build_mod, "get_rank_and_world_size", lambda: (1, 2))
    monkeypatch.setattr(samplers_mod, "get_rank_and_world_size", lambda: (1, 2))
    batch = next(iter(build_detection_train_loader(cfg_for(batch=4))))
    assert len(batch) == 2
    with pytest.raises(ValueError, match="IMS_PER_BATCH.*multiple"):
        build_detection_train_loader(cfg_for(batch=3))


def test_filter_empty_annotations_switch(tiny_coco):
    assert len(get_detection_dataset_dicts("t_loader", filter_empty=True)) == 7
    assert len(get_detection_dataset_dicts("t_loader", filter_empty=False)) == 8


def test_test_loader_covers_dataset_in_order(tiny_coco):
    loader = build_detection_test_loader(cfg_for(workers=2), "t_loader")
    assert len(loader) == 8
    batches = list(loader)
    assert [b[0]["image_id"] for b in batches] == list(range(1, 9))
    assert all(
        len(b) == 1 and "instances" not in b[0] and min(b[0]["image"].shape[1:]) == 20
        for b in batches
    )


def test_worker_error_is_reraised_naming_the_file(tiny_coco):
    dicts = get_detection_dataset_dicts("t_loader")
    dicts[3] = dict(dicts[3], file_name=str(tiny_coco / "gone.png"))

    cfg = cfg_for(workers=2)
    with pytest.raises(DataLoadError) as info:
        for _ in itertools.islice(iter(build_detection_train_loader(cfg, dataset=dicts)), 20):
            pass
    msg = str(info.value)
    assert "gone.png" in msg and "not found" in msg and "Traceback" not in msg
    assert info.value.file_name.endswith("gone.png") and "Traceback" in info.value.worker_traceback


def test_mapper_returning_none_skips_the_sample(tiny_coco):
    from resnet_backbones.data import DatasetMapper

    base = DatasetMapper(cfg_for(), True)

    def mapper(d):
        return None if d["image_id"] == 1 else base(d)

    batches = list(
        itertools.islice(iter(build_detection_train_loader(cfg_for(workers=2), mapper=mapper)), 8)
    )
    assert all(d["image_id"] != 1 for b in batches for d in b)
