# Our ResNet under torchvision's FeaturePyramidNetwork: a drop-in for torchvision's
# resnet_fpn_backbone (outputs "0".."3" and "pool", 256 channels each).
import torch
from torchvision.models.detection import FasterRCNN

from resnet_backbones.integrations.torchvision import resnet_fpn_backbone

backbone = resnet_fpn_backbone(
    "resnet50",
    weights=None,  # e.g. "resnet50-0676ba61.pth" (torchvision) or "R-50.pkl" (MSRA)
    trainable_layers=3,  # torchvision's meaning: res3, res4, res5 train; stem and res2 frozen
    returned_layers=[1, 2, 3, 4],
)
model = FasterRCNN(backbone, num_classes=4, min_size=128, max_size=128).eval()
with torch.no_grad():
    (detections,) = model([torch.rand(3, 128, 128)])
print(list(backbone(torch.rand(1, 3, 128, 128))), sorted(detections))
