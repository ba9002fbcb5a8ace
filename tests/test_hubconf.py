"""hubconf.py: every registered model is a torch.hub entry point (source="local")."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from resnet_backbones import create_model, list_models

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hubconf():
    spec = importlib.util.spec_from_file_location("rb_hubconf", ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_registered_model_is_an_entry_point(hubconf):
    assert hubconf.dependencies == ["torch", "torchvision"]
    entries = {
        name
        for name in dir(hubconf)
        if callable(getattr(hubconf, name)) and not name.startswith("_")
    }
    assert set(list_models()) <= entries
    assert {"fasterrcnn_resnet_c4", "maskrcnn_resnet_c4"} <= entries
    assert hubconf.resnet50.__name__ == "resnet50" and "create_model" in hubconf.resnet50.__doc__


def test_torch_hub_load_local(tmp_path):
    torch.manual_seed(0)
    model = torch.hub.load(str(ROOT), "resnet20_cifar", source="local")
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    # kwargs reach create_model; weights (a path, any supported format) are loaded strictly.
    reference = create_model("resnet18", num_classes=5).eval()
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    loaded = torch.hub.load(
        str(ROOT), "resnet18", source="local", num_classes=5, weights=str(path)
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))
    # torchvision-named weights into a headless backbone (classifier dropped).
    import torchvision

    tv = torchvision.models.resnet18()
    backbone = torch.hub.load(
        str(ROOT), "resnet18", source="local", num_classes=None, weights=tv.state_dict()
    )
    assert torch.equal(backbone.stem.conv1.weight, tv.conv1.weight)
    with pytest.raises(ValueError, match="no weights are hosted"):
        torch.hub.load(str(ROOT), "resnet50", source="local", pretrained=True)


def test_torch_hub_load_c4_detector():
    from torchvision.models.detection import FasterRCNN

    model = torch.hub.load(
        str(ROOT), "fasterrcnn_resnet_c4", source="local", name="resnet18", num_classes=4
    )
    assert isinstance(model, FasterRCNN) and model.backbone.out_channels == 256
    from torchvision.models.detection import MaskRCNN

    model = torch.hub.load(
        str(ROOT), "maskrcnn_resnet_c4", source="local", name="resnet18", num_classes=4
    )
    assert isinstance(model, MaskRCNN) and model.roi_heads.mask_predictor is not None
    with pytest.raises(ValueError, match="no weights are hosted"):
        torch.hub.load(str(ROOT), "maskrcnn_resnet_c4", source="local", pretrained=True)
