# Train and evaluate with detectron2's DefaultTrainer and COCOEvaluator on the shapes dataset,
# with our backbone and C4 head. Run from the repository root; extra arguments are config
# overrides:  python docs/snippets/detectron2_train_shapes.py SOLVER.MAX_ITER 300
import os
import sys

from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator

from resnet_backbones.data.shapes import generate_shapes_dataset
from resnet_backbones.integrations.detectron2 import add_rb_config, register_shapes

root = os.path.expanduser(os.getenv("RB_DATASETS", "datasets"))
if not os.path.isfile(os.path.join(root, "shapes", "annotations", "instances_val.json")):
    generate_shapes_dataset(os.path.join(root, "shapes"))
# shapes_train, shapes_val in detectron2's DatasetCatalog (register_coco_instances)
register_shapes(root)

cfg = get_cfg()
add_rb_config(cfg)
cfg.merge_from_file("configs/detectron2/faster_rcnn_rb_R50_C4_shapes.yaml")
cfg.merge_from_list(sys.argv[1:])


class Trainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name):
        return COCOEvaluator(dataset_name, output_dir=cfg.OUTPUT_DIR)


trainer = Trainer(cfg)
trainer.resume_or_load(resume=False)
trainer.train()  # MAX_ITER iterations, then one evaluation on DATASETS.TEST
results = trainer._last_eval_results  # {"bbox": {"AP": ..., "AP50": ..., ...}}
print(results["bbox"])
