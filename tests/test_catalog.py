"""DatasetCatalog and MetadataCatalog behave like detectron2's."""

import pytest

from resnet_backbones.data import DatasetCatalog, MetadataCatalog


@pytest.fixture
def registered():
    name = "catalog_test_ds"
    DatasetCatalog.register(name, lambda: [{"file_name": "a.jpg", "image_id": 1}])
    yield name
    DatasetCatalog.remove(name)
    if name in MetadataCatalog:
        MetadataCatalog.remove(name)


def test_register_and_get(registered):
    assert registered in DatasetCatalog.list()
    assert DatasetCatalog.get(registered) == [{"file_name": "a.jpg", "image_id": 1}]


def test_double_registration_and_non_callable_are_refused(registered):
    with pytest.raises(ValueError, match="already registered"):
        DatasetCatalog.register(registered, lambda: [])
    with pytest.raises(TypeError, match="callable"):
        DatasetCatalog.register("catalog_test_other", [1, 2])


def test_unknown_dataset_suggests_close_names(registered):
    with pytest.raises(KeyError, match="catalog_test_dss.*did you mean 'catalog_test_ds'"):
        DatasetCatalog.get("catalog_test_dss")


def test_metadata_is_created_on_access_and_cannot_silently_change(registered):
    meta = MetadataCatalog.get(registered).set(thing_classes=["a", "b"])
    assert MetadataCatalog.get(registered).thing_classes == ["a", "b"]
    meta.thing_classes = ["a", "b"]  # same value: fine
    with pytest.raises(ValueError, match="thing_classes.*catalog_test_ds"):
        meta.thing_classes = ["c"]
    with pytest.raises(AttributeError, match="no attribute 'evaluator_type'.*thing_classes"):
        _ = meta.evaluator_type
    assert meta.get("evaluator_type", "coco") == "coco"
