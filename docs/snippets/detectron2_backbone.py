# Our ResNet as a detectron2 backbone (and our res5 as the C4 head) in detectron2's own model.
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from resnet_backbones import create_model
from resnet_backbones.checkpoint import load_checkpoint
from resnet_backbones.integrations.detectron2 import add_rb_config  # registers our builders

cfg = get_cfg()
# MODEL.RESNETS.{SHORTCUT, PREACT, CHANNELS_LAST, ZERO_INIT_RESIDUAL, RES5_HEAD_BLOCK}
add_rb_config(cfg)
cfg.MODEL.DEVICE = "cpu"
cfg.MODEL.BACKBONE.NAME = "build_rb_resnet_backbone"
cfg.MODEL.ROI_HEADS.NAME = "RBRes5ROIHeads"  # res5 head built with our blocks
cfg.MODEL.RESNETS.DEPTH = 50
cfg.MODEL.RESNETS.PREACT = True  # e.g. pre-activation blocks, trunk and head
cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
model = build_model(cfg)

# Any checkpoint our converters read loads into it, e.g. an ImageNet pre-activation ResNet-50:
imagenet = create_model("preact_resnet50", stride_in_1x1=True).state_dict()
report = load_checkpoint(model, imagenet, strict=False, drop_classifier=True)
print(
    len(report.matched),
    "tensors loaded; left as initialized:",
    sorted({k.rsplit(".", 2)[0] for k in report.missing}),
)
# -> the RPN head and the box predictor only
model.eval()
with torch.no_grad():
    outputs = model([{"image": torch.zeros(3, 128, 128)}])
print(outputs[0]["instances"])
