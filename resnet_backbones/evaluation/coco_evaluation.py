"""COCO-style box and mask AP, with detectron2's ``COCOEvaluator`` interface and two
interchangeable backends.

* ``"fast"`` (default): :class:`~.fast_coco_eval.FastCOCOeval`, a vectorized re-implementation that
  gives the same numbers as pycocotools, bit for bit, many times faster; it covers boxes only, so
  mask AP (``"segm"``) is always computed with pycocotools (and the log says so);
* ``"pycocotools"``: the official ``COCOeval`` (the reference).

Predictions with ``pred_masks`` (bool ``(N, H, W)`` in the original image size) are stored as COCO
RLE (``counts`` as str) in the result dicts, ``instances_predictions.pth`` and
``coco_instances_results.json``, as in detectron2.

Proposals (``{"proposals": Instances}`` outputs of a ``ProposalNetwork``) are scored by
detectron2's proposal recall under the task ``"box_proposals"``
(:mod:`~resnet_backbones.evaluation.proposal_recall`).

Metrics are on detectron2's 0-100 scale; -1 from COCOeval (nothing to evaluate) becomes NaN.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.cocoeval import COCOeval

from ..data.catalog import DatasetCatalog, MetadataCatalog
from ..structures import BoxMode, Instances
from ..utils import comm
from ..utils.registry import not_registered
from .coco_format import convert_to_coco_json
from .evaluator import DatasetEvaluator, check_class_ids
from .fast_coco_eval import (
    STAT_NAMES,
    DetectionColumns,
    FastCOCOeval,
    quiet_coco,
    summarize_coco_eval,
)
from .proposal_recall import proposal_recall_metrics, save_box_proposals
from .tables import create_small_table, per_category_table

__all__ = [
    "COCOEvaluator",
    "instances_to_coco_json",
    "evaluate_predictions_on_coco",
    "encode_masks",
    "tasks_from_predictions",
    "BACKENDS",
    "TASKS",
]

BACKENDS = ("fast", "pycocotools")
TASKS = ("bbox", "segm")
_AP_KEYS = STAT_NAMES[:6]
SEGM_FALLBACK_MESSAGE = "segm: evaluated with pycocotools (the fast backend covers bbox)"


def encode_masks(masks: Any) -> List[Dict[str, Any]]:
    """Binary masks ``(N, H, W)`` (bool or 0/1 integers, tensor or array) as COCO RLE dicts with
    str ``counts``."""
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"pred_masks must be (N, H, W), got shape {tuple(masks.shape)}")
    if masks.dtype.kind == "f":
        raise ValueError(
            "pred_masks must be binary (bool) masks in the image size, got floating point "
            "(mask probabilities: paste and threshold them first)"
        )
    if len(masks) == 0:
        return []
    # pycocotools encodes (H, W, N) Fortran-ordered uint8 arrays
    rles = mask_util.encode(np.asfortranarray(np.transpose(masks > 0, (1, 2, 0)).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("utf-8")  # json cannot hold bytes
    return rles


def instances_to_coco_json(instances: Instances, img_id: Any) -> List[Dict[str, Any]]:
    """Detections of one image as COCO result dicts (xywh boxes; category ids still contiguous);
    with ``pred_masks``, each also has its mask as RLE in ``segmentation``."""
    if len(instances) == 0:
        return []
    boxes = BoxMode.convert(
        instances.pred_boxes.tensor.numpy(), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS
    ).tolist()
    scores = instances.scores.tolist()
    classes = instances.pred_classes.tolist()
    results = [
        {"image_id": img_id, "category_id": c, "bbox": b, "score": s}
        for b, s, c in zip(boxes, scores, classes)
    ]
    if instances.has("pred_masks"):
        rles = encode_masks(instances.pred_masks)
        if len(rles) != len(results):
            raise ValueError(f"{len(rles)} pred_masks for {len(results)} detections")
        for r, rle in zip(results, rles):
            r["segmentation"] = rle
    return results


def tasks_from_predictions(results: Sequence[Dict[str, Any]]) -> Tuple[str, ...]:
    """``("bbox",)``, plus ``"segm"`` when the result dicts carry a ``segmentation``."""
    if any("segmentation" in r for r in results):
        return ("bbox", "segm")
    return ("bbox",)


def evaluate_predictions_on_coco(
    coco_gt: Any,
    coco_results: Union[List[Dict[str, Any]], DetectionColumns],
    iou_type: str = "bbox",
    backend: str = "fast",
    img_ids: Optional[Sequence[Any]] = None,
    max_dets_per_image: Optional[Sequence[int]] = None,
) -> Union[COCOeval, FastCOCOeval]:
    """Run evaluate/accumulate/summarize with ``backend``; returns the eval object (``.stats``,
    ``.eval``).

    ``coco_results``: COCO result dicts or :class:`DetectionColumns` (dataset category ids).

    ``max_dets_per_image`` is COCOeval's ``maxDets`` (default ``[1, 10, 100]``); AP uses its third
    entry (detectron2's ``COCOevalMaxDets``). pycocotools' prints go to the log at DEBUG level.

    ``iou_type="segm"`` needs result dicts with RLE ``segmentation``; it always runs pycocotools
    (the fast backend covers boxes). As in detectron2, the results' ``bbox`` is dropped for it so
    that the detections' areas (small/medium/large) are the mask areas.
    """
    if iou_type not in TASKS:
        raise NotImplementedError(f"iou_type must be one of {TASKS}, got {iou_type!r}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown COCO evaluation backend {backend!r}; choose one of {BACKENDS}")
    if len(coco_results) == 0:
        raise ValueError("no detections to evaluate")
    if iou_type == "segm":
        if isinstance(coco_results, DetectionColumns):
            raise ValueError("segm evaluation needs result dicts with 'segmentation', got columns")
        missing = sum("segmentation" not in r for r in coco_results)
        if missing:
            raise ValueError(
                f"segm evaluation: {missing} of {len(coco_results)} detections have no "
                "'segmentation' (the model gave no pred_masks?)"
            )
        coco_results = [{k: v for k, v in r.items() if k != "bbox"} for r in coco_results]
        backend = "pycocotools"
    max_dets = list(max_dets_per_image) if max_dets_per_image is not None else [1, 10, 100]
    if len(max_dets) < 3:
        raise ValueError(
            f"max_dets_per_image needs at least 3 entries (COCOeval's maxDets), got {max_dets}"
        )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if backend == "pycocotools":
            # loadRes modifies the dicts it gets (adds area, id, iscrowd, a polygon): give it copies
            if isinstance(coco_results, DetectionColumns):
                coco_results = _columns_to_dicts(coco_results)
            coco_dt = coco_gt.loadRes([dict(r) for r in coco_results])
            coco_eval: Union[COCOeval, FastCOCOeval] = COCOeval(coco_gt, coco_dt, iou_type)
        else:
            coco_eval = FastCOCOeval(coco_gt, coco_results, iou_type)
        coco_eval.params.maxDets = max_dets
        if img_ids is not None:
            coco_eval.params.imgIds = list(img_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
    coco_eval.stats, lines = summarize_coco_eval(
        coco_eval.eval["precision"], coco_eval.eval["recall"], coco_eval.params
    )
    logging.getLogger(__name__).debug(out.getvalue())
    coco_eval.summary_lines = lines  # type: ignore[union-attr]
    return coco_eval


def _columns_to_dicts(cols: DetectionColumns) -> List[Dict[str, Any]]:
    return [
        {"image_id": i, "category_id": c, "bbox": b, "score": s}
        for i, c, b, s in zip(
            cols.image_id, cols.category_id.tolist(), cols.bbox.tolist(), cols.score.tolist()
        )
    ]


def _check_registered(dataset_name: str) -> None:
    """Fail early, with close matches, for a name COCOEvaluator could neither read nor convert."""
    meta = MetadataCatalog.get(dataset_name) if dataset_name in MetadataCatalog else None
    if dataset_name in DatasetCatalog or (meta is not None and meta.get("json_file")):
        return
    if meta is not None:
        raise KeyError(
            f"dataset '{dataset_name}' has metadata but neither metadata.json_file "
            "nor a DatasetCatalog loader to convert to COCO format"
        )
    known = set(DatasetCatalog.list()) | set(MetadataCatalog.list())
    raise not_registered("dataset", dataset_name, known)


class COCOEvaluator(DatasetEvaluator):
    """COCO box and mask AP (and proposal recall) of a registered dataset, as detectron2's
    ``COCOEvaluator``.

    ``evaluate()`` returns ``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10",
    "AR100", "ARs", "ARm", "ARl", "AP-<class>", ...}, "segm": {...the same keys...}}`` (0-100) on
    the main process, ``{}`` elsewhere, and logs a summary and a per-category table per task. With
    ``output_dir`` it writes ``instances_predictions.pth`` and ``coco_instances_results.json``
    there (with RLE masks when the predictions have ``pred_masks``).

    Outputs with ``"proposals"`` (a ``ProposalNetwork``'s) add the task ``"box_proposals"``:
    ``{"AR@100", "ARs@100", "ARm@100", "ARl@100", "AR@1000", "ARs@1000", "ARm@1000",
    "ARl@1000"}``, detectron2's proposal recall (``tasks`` does not select it: proposals are
    always evaluated, as in detectron2); with ``output_dir``, also ``box_proposals.pkl``.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Optional[Sequence[str]] = None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        max_dets_per_image: Optional[int] = None,
        use_fast_impl: bool = True,
        allow_cached_coco: bool = True,
        backend: Optional[str] = None,
    ) -> None:
        """
        Args:
            dataset_name: a registered dataset; its metadata gives ``json_file`` or, if absent, the
                dataset is converted to ``<output_dir>/<dataset_name>_coco_format.json``.
            tasks: a subset of ``("bbox", "segm")``; None (default): derived from the
                predictions, as in detectron2 (``"segm"`` too when they have ``pred_masks``).
                ``"segm"`` is skipped, with a warning, when the ground truth has no masks.
            distributed: gather predictions from all processes and evaluate on the main one.
            output_dir: where to write predictions and results (optional).
            max_dets_per_image: detections per image for AP (COCO's 100 by default).
            use_fast_impl: use the fast backend (ignored when ``backend`` is given).
            allow_cached_coco: reuse a previously converted COCO json in ``output_dir``.
            backend: ``"fast"`` or ``"pycocotools"``.
        """
        self._logger = logging.getLogger(__name__)
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        if tasks is not None:
            tasks = tuple(tasks)
            if not tasks or any(t not in TASKS for t in tasks):
                raise ValueError(f"COCOEvaluator supports the tasks 'bbox' and 'segm', got {tasks}")
        self._tasks: Optional[Tuple[str, ...]] = tasks
        self._segm_fallback_logged = False
        if backend is None:
            backend = "fast" if use_fast_impl else "pycocotools"
        if backend not in BACKENDS:
            raise ValueError(
                f"unknown COCO evaluation backend {backend!r}; choose one of {BACKENDS}"
            )
        self._backend = backend
        if max_dets_per_image is not None and (
            not isinstance(max_dets_per_image, int) or max_dets_per_image < 10
        ):
            raise ValueError(
                "max_dets_per_image must be an int >= 10 (COCO uses [1, 10, max]), "
                f"got {max_dets_per_image!r}"
            )
        self._max_dets = [1, 10, 100 if max_dets_per_image is None else max_dets_per_image]

        _check_registered(dataset_name)
        self._metadata = MetadataCatalog.get(dataset_name)
        if not self._metadata.get("json_file"):
            if output_dir is None:
                raise ValueError(
                    f"dataset '{dataset_name}' has no metadata.json_file: "
                    "pass output_dir so that COCOEvaluator can convert it to COCO format there"
                )
            cache_path = os.path.join(output_dir, f"{dataset_name}_coco_format.json")
            self._logger.info(f"Converting '{dataset_name}' to COCO format at {cache_path}")
            convert_to_coco_json(dataset_name, cache_path, allow_cached=allow_cached_coco)
            self._metadata.json_file = cache_path
        json_file = self._metadata.json_file
        if not os.path.isfile(json_file):
            raise FileNotFoundError(
                f"the COCO annotation file of dataset '{dataset_name}' does not exist: {json_file}"
            )
        self._coco_api = quiet_coco(json_file)
        self._do_evaluation = "annotations" in self._coco_api.dataset
        self._contiguous_to_dataset = self._category_mapping()
        self.coco_eval: Dict[str, Any] = {}  # task -> the eval object of the last evaluate()
        self.reset()

    def _category_mapping(self) -> Optional[Dict[int, int]]:
        mapping = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if not mapping:
            return None
        contiguous = sorted(mapping.values())
        if contiguous != list(range(len(contiguous))):
            raise ValueError(
                f"thing_dataset_id_to_contiguous_id of '{self._dataset_name}' "
                f"must map to 0..{len(contiguous) - 1}, "
                f"got values {contiguous}"
            )
        return {v: k for k, v in mapping.items()}

    def _num_classes(self) -> Optional[int]:
        if self._contiguous_to_dataset is not None:
            return len(self._contiguous_to_dataset)
        classes = self._metadata.get("thing_classes")
        return len(classes) if classes is not None else None

    def reset(self) -> None:
        self._predictions: List[Dict[str, Any]] = []

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        """Convert each output's ``instances`` to COCO result dicts and keep its ``proposals``
        (on the CPU), until ``evaluate``."""
        if len(inputs) != len(outputs):
            raise ValueError(f"got {len(inputs)} inputs but {len(outputs)} outputs")
        num_classes = self._num_classes()
        for inp, out in zip(inputs, outputs):
            if "image_id" not in inp:
                raise KeyError(f"an input has no 'image_id' (keys: {sorted(inp)})")
            prediction: Dict[str, Any] = {"image_id": inp["image_id"]}
            if "instances" in out:
                instances = out["instances"].to("cpu")
                if num_classes is not None:
                    check_class_ids(
                        instances.pred_classes, num_classes, inp["image_id"], self._dataset_name
                    )
                prediction["instances"] = instances_to_coco_json(instances, inp["image_id"])
            if "proposals" in out:
                prediction["proposals"] = out["proposals"].to("cpu")
            if len(prediction) > 1:
                self._predictions.append(prediction)

    def evaluate(self, img_ids: Optional[Sequence[Any]] = None) -> Dict[str, Any]:
        """Metrics over all processed predictions (``img_ids`` restricts the images evaluated)."""
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions
        if len(predictions) == 0:
            self._logger.warning("[COCOEvaluator] Did not receive valid predictions.")
            return {}
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            torch.save(predictions, os.path.join(self._output_dir, "instances_predictions.pth"))
        results_by_task: Dict[str, Any] = OrderedDict()
        proposals = [p for p in predictions if "proposals" in p]
        if proposals:
            results_by_task.update(self._eval_box_proposals(proposals))
        instances = [p for p in predictions if "instances" in p]
        if instances:
            results_by_task.update(self._eval_instances(instances, img_ids))
        return copy.deepcopy(results_by_task)

    def _eval_box_proposals(self, predictions: List[Dict[str, Any]]) -> Dict[str, Any]:
        """``{"box_proposals": {"AR@100", ...}}`` (detectron2's proposal recall); with
        ``output_dir``, writes ``box_proposals.pkl``."""
        if self._output_dir:
            path = save_box_proposals(predictions, self._output_dir)
            self._logger.info(f"Saved the proposals to {path}")
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return {}
        self._logger.info("Evaluating bbox proposals ...")
        return {"box_proposals": proposal_recall_metrics(predictions, self._coco_api)}

    def _eval_instances(
        self, predictions: List[Dict[str, Any]], img_ids: Optional[Sequence[Any]]
    ) -> Dict[str, Any]:
        """``{"bbox": ..., "segm": ...}``: box (and mask) AP of the predictions' ``instances``;
        with ``output_dir``, writes ``coco_instances_results.json``."""
        results = list(itertools.chain(*[p["instances"] for p in predictions]))
        columns = self._to_columns(results)
        tasks = self._tasks or tasks_from_predictions(results)
        # the fast backend reads the columns; result dicts with dataset ids only when needed
        coco_results: Union[List[Dict[str, Any]], DetectionColumns] = columns
        result_dicts: Optional[List[Dict[str, Any]]] = None
        if self._output_dir or self._backend == "pycocotools" or "segm" in tasks:
            result_dicts = [
                dict(r, category_id=c) for r, c in zip(results, columns.category_id.tolist())
            ]
            if self._backend == "pycocotools":
                coco_results = result_dicts
        if self._output_dir:
            self._save_results(result_dicts)
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return {}
        if "segm" in tasks and not self._gt_has_masks():
            tasks = tuple(t for t in tasks if t != "segm")
            if not tasks:
                return {}
        results_by_task: Dict[str, Any] = OrderedDict()
        for task in tasks:
            backend = self._backend
            task_results = coco_results
            if task == "segm":
                task_results = result_dicts
                if backend != "pycocotools":
                    backend = "pycocotools"
                    if not self._segm_fallback_logged:
                        self._logger.info(SEGM_FALLBACK_MESSAGE)
                        self._segm_fallback_logged = True
            self._logger.info(f"Evaluating {task} predictions with the {backend} COCO backend ...")
            coco_eval = (
                evaluate_predictions_on_coco(
                    self._coco_api, task_results, task, backend, img_ids, self._max_dets
                )
                if len(columns)
                else None
            )
            self.coco_eval[task] = coco_eval
            results_by_task[task] = self._derive_coco_results(coco_eval, task)
        return results_by_task

    def _gt_has_masks(self) -> bool:
        """Whether every ground-truth annotation has a ``segmentation``: False (with a warning)
        when none has one; a ValueError when only some have."""
        anns = self._coco_api.dataset.get("annotations", [])
        with_masks = sum("segmentation" in a for a in anns)
        if anns and with_masks == 0:
            self._logger.warning(
                f"segm evaluation skipped: the ground truth of '{self._dataset_name}' has no "
                "masks (no annotation has a 'segmentation')"
            )
            return False
        if with_masks < len(anns):
            raise ValueError(
                f"segm evaluation: {len(anns) - with_masks} of {len(anns)} ground-truth "
                f"annotations of '{self._dataset_name}' have no 'segmentation'"
            )
        return True

    def _save_results(self, coco_results: Any) -> None:
        """``coco_instances_results.json`` (dataset category ids)."""
        path = os.path.join(self._output_dir, "coco_instances_results.json")
        self._logger.info(f"Saving results to {path}")
        with open(path, "w") as f:
            json.dump(coco_results, f)

    def _to_columns(self, results: List[Dict[str, Any]]) -> DetectionColumns:
        """Result dicts (contiguous class ids) as columns with the dataset's category ids."""
        columns = DetectionColumns.from_results(results)
        if self._contiguous_to_dataset is None:
            return columns
        contiguous = columns.category_id.astype(np.int64)
        num = len(self._contiguous_to_dataset)
        bad = (contiguous < 0) | (contiguous >= num)
        if bad.any():
            raise ValueError(
                f"a prediction has class {int(contiguous[bad][0])}, "
                f"but dataset '{self._dataset_name}' has {num} "
                f"classes (ids 0..{num - 1})"
            )
        table = np.asarray([self._contiguous_to_dataset[i] for i in range(num)])
        columns.category_id = table[contiguous]
        return columns

    def _metric_names(self) -> Tuple[str, ...]:
        md = self._max_dets
        return _AP_KEYS + (f"AR{md[0]}", f"AR{md[1]}", f"AR{md[2]}", "ARs", "ARm", "ARl")

    def _class_names(self, num: int) -> List[str]:
        names = self._metadata.get("thing_classes")
        if names is not None and len(names) == num:
            return list(names)
        cats = self._coco_api.loadCats(sorted(self._coco_api.getCatIds()))
        return [c["name"] for c in cats]

    def _derive_coco_results(self, coco_eval: Optional[Any], task: str) -> Dict[str, float]:
        """Metrics on the 0-100 scale (NaN where COCOeval reports -1) and per-category AP."""
        names = self._metric_names()
        if coco_eval is None:
            self._logger.warning("No predictions from the model!")
            return {name: float("nan") for name in names}
        results = {
            name: float(v * 100) if v >= 0 else float("nan")
            for name, v in zip(names, coco_eval.stats)
        }
        self._logger.info("COCO summary:\n" + "\n".join(coco_eval.summary_lines))
        self._logger.info(f"Evaluation results for {task}:\n" + create_small_table(results))
        if not np.isfinite(sum(results.values())):
            self._logger.info("Some metrics cannot be computed and are shown as NaN.")
        precisions = coco_eval.eval["precision"]  # [T, R, K, A, M]
        class_names = self._class_names(precisions.shape[2])
        if len(class_names) <= 1:
            return results
        per_category = []
        for k, name in enumerate(class_names):
            p = precisions[:, :, k, 0, -1]
            p = p[p > -1]
            per_category.append((name, float(np.mean(p) * 100) if p.size else float("nan")))
        self._logger.info(f"Per-category {task} AP:\n" + per_category_table(per_category))
        results.update({f"AP-{name}": ap for name, ap in per_category})
        return results
