"""Evaluation: detectron2's evaluator API (``DatasetEvaluator``, ``inference_on_dataset``), COCO box
AP with a fast backend identical to pycocotools, COCO mask AP (pycocotools), detectron2's proposal
recall (AR@100/AR@1000 of RPN-only models), and Pascal VOC AP identical to detectron2's."""

from .coco_evaluation import COCOEvaluator, evaluate_predictions_on_coco, instances_to_coco_json
from .coco_format import convert_to_coco_dict, convert_to_coco_json
from .evaluator import DatasetEvaluator, DatasetEvaluators, inference_context, inference_on_dataset
from .fast_coco_eval import FastCOCOeval
from .pascal_voc_evaluation import PascalVOCDetectionEvaluator
from .proposal_recall import evaluate_box_proposals, proposal_recall_metrics
from .testing import print_csv_format, verify_results

__all__ = [
    "COCOEvaluator",
    "DatasetEvaluator",
    "DatasetEvaluators",
    "FastCOCOeval",
    "PascalVOCDetectionEvaluator",
    "convert_to_coco_dict",
    "convert_to_coco_json",
    "evaluate_box_proposals",
    "evaluate_predictions_on_coco",
    "inference_context",
    "inference_on_dataset",
    "instances_to_coco_json",
    "print_csv_format",
    "proposal_recall_metrics",
    "verify_results",
]
