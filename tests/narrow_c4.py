"""A narrow R50-C4 config shared by the fast-path and precision tests (imported by test modules)."""
from resnet_backbones import get_cfg

# detectron2's Base-RCNN-C4 at 1/8 width (stem 16, res2 32 channels), 5 classes, 300 test proposals.
NARROW = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", 16,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 32,
    "MODEL.RESNETS.WIDTH_PER_GROUP", 8,
    "MODEL.ROI_HEADS.NUM_CLASSES", 5,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 300,
]


def narrow_c4_cfg(extra=()):
    """``configs/Base-RCNN-C4.yaml`` with :data:`NARROW` and ``extra`` (KEY, VALUE, ...) merged."""
    cfg = get_cfg()
    cfg.merge_from_file("configs/Base-RCNN-C4.yaml")
    cfg.merge_from_list([str(v) for v in [*NARROW, *extra]])
    return cfg
