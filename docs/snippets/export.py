# Export from Python (tools/export_model.py does the same from the command line).
import torch

from resnet_backbones import get_cfg
from resnet_backbones.export import example_image, export_model

cfg = get_cfg()
cfg.merge_from_file("configs/shapes/faster_rcnn_tiny_C4.yaml")
cfg.MODEL.WEIGHTS = ""  # e.g. "output/shapes_tiny/model_final.pth"
result = export_model(cfg, "torchscript", "export/tiny_c4", input_size=(160, 160))
print(result.path, result.output_names, result.max_abs_diff)  # export/tiny_c4/model.ts [...] 0.0

detector = torch.jit.load(result.path)
boxes, scores, classes = detector(example_image(160, 160))  # (3, H, W) float, 0-255, BGR
