# Faster R-CNN C4 in torchvision's own detector class, with our ResNet: trunk res2..res4 as the
# backbone, res5 + average pooling as the box head. Labels are 1..K (0 is background).
import numpy as np
import torch

from resnet_backbones.data.shapes import SHAPES_CLASSES, render_detection_image
from resnet_backbones.integrations.torchvision import fasterrcnn_resnet_c4

model = fasterrcnn_resnet_c4(
    "resnet18",  # any registered ImageNet model: resnet50, preact_resnet50, ...
    num_classes=len(SHAPES_CLASSES) + 1,  # + background
    weights=None,  # or a checkpoint path / state dict (torchvision, MSRA, detectron2, ours)
    # FasterRCNN arguments go to the detector ...
    min_size=160,
    max_size=256,
    rpn_post_nms_top_n_train=256,
    rpn_post_nms_top_n_test=100,
    box_batch_size_per_image=64,
    # ... ResNet arguments to the backbone (from scratch: BN, nothing frozen)
    norm="BN",
    freeze_at=0,
)

# One training step on a synthetic image (RGB floats in [0, 1], as torchvision expects).
bgr, annotations = render_detection_image(np.random.default_rng(0), 160, 160)
image = torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255
target = {
    "boxes": torch.tensor([box for _, box in annotations], dtype=torch.float32),
    "labels": torch.tensor([cls + 1 for cls, _ in annotations]),
}
optimizer = torch.optim.SGD(
    [p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9
)
model.train()
# loss_classifier, loss_box_reg, loss_objectness, loss_rpn_box_reg
losses = model([image], [target])
optimizer.zero_grad()
sum(losses.values()).backward()
optimizer.step()

model.eval()
with torch.no_grad():
    (detections,) = model([image])
print({k: tuple(v.shape) for k, v in detections.items()})  # boxes (N, 4), labels (N,), scores (N,)
