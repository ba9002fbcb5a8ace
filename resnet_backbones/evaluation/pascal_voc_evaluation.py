"""Pascal VOC box AP with detectron2's ``PascalVOCDetectionEvaluator`` interface and numbers.

Ground truth comes from the VOC XML files (``<dirname>/Annotations/<id>.xml``) of the images listed
in ``<dirname>/ImageSets/Main/<split>.txt``. As in the VOC devkit (and detectron2's Python port):

* a detection matches the ground truth of its class and image with the highest IoU (pixel-inclusive
  "+1" areas); it is a true positive if that IoU > threshold, the ground truth is not yet taken and
  not ``difficult``; a match to a ``difficult`` one counts neither way; anything else is a false
  positive. ``difficult`` objects are not counted in the recall denominator;
* AP is the VOC2007 11-point interpolated AP when ``metadata.year == 2007``, else the area under
  the monotone precision envelope (VOC2010+);
* "AP" averages the mAP at IoU 0.50, 0.55, ..., 0.95; "AP50"/"AP75" are the mAP at 0.5/0.75.

To give detectron2's numbers exactly, predictions go through the same text round trip detectron2
uses: boxes become 1-based (``x0 + 1``, ``y0 + 1``) and are rounded to 0.1 pixel, scores to 0.001.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections import OrderedDict
from typing import Any, Dict, List, Tuple

import numpy as np

from ..data.catalog import MetadataCatalog
from ..utils import comm
from ..utils.registry import not_registered
from .evaluator import DatasetEvaluator, check_class_ids
from .tables import markdown_table

__all__ = ["PascalVOCDetectionEvaluator", "voc_ap", "parse_voc_xml"]

_THRESHOLDS = tuple(range(50, 100, 5))  # IoU thresholds in percent


def parse_voc_xml(path: str) -> List[Dict[str, Any]]:
    """Objects of a VOC annotation file: ``name``, ``difficult`` (bool) and ``bbox`` (1-based
    x0 y0 x1 y1)."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise FileNotFoundError(f"VOC annotation file not found: {path}") from None
    objects = []
    for obj in root.findall("object"):
        box = obj.find("bndbox")
        difficult = obj.find("difficult")
        objects.append(
            {
                "name": obj.find("name").text.strip(),
                "difficult": bool(int(difficult.text))
                if difficult is not None and difficult.text
                else False,
                "bbox": [float(box.find(tag).text) for tag in ("xmin", "ymin", "xmax", "ymax")],
            }
        )
    return objects


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from a recall/precision curve: the 11-point VOC2007 metric or the exact area
    (VOC2010+)."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            above = rec >= t
            ap = ap + (np.max(prec[above]) if np.sum(above) else 0) / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def _round_text(values: np.ndarray, digits: int) -> np.ndarray:
    """Round as printing with ``f"{v:.<digits>f}"`` and parsing back does (exact, unlike
    ``np.round``)."""
    flat = np.asarray(values, dtype=np.float64)
    return np.array(
        [float(f"{v:.{digits}f}") for v in flat.ravel().tolist()], dtype=np.float64
    ).reshape(flat.shape)


def _voc_iou(det: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of paired 1-based inclusive boxes, with the devkit's "+1" widths."""
    iw = np.maximum(np.minimum(gt[:, 2], det[:, 2]) - np.maximum(gt[:, 0], det[:, 0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(gt[:, 3], det[:, 3]) - np.maximum(gt[:, 1], det[:, 1]) + 1.0, 0.0)
    inters = iw * ih
    union = (
        (det[:, 2] - det[:, 0] + 1.0) * (det[:, 3] - det[:, 1] + 1.0)
        + (gt[:, 2] - gt[:, 0] + 1.0) * (gt[:, 3] - gt[:, 1] + 1.0)
        - inters
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        return inters / union


class PascalVOCDetectionEvaluator(DatasetEvaluator):
    """VOC AP / AP50 / AP75 of a dataset registered with ``dirname``, ``split``, ``year``,
    ``thing_classes``.

    ``evaluate()`` returns ``{"bbox": {"AP", "AP50", "AP75", "AP-<class>", "AP50-<class>", ...}}``
    on the main process and ``{}`` on the others; results are gathered from all processes.
    """

    def __init__(self, dataset_name: str, distributed: bool = True) -> None:
        if dataset_name not in MetadataCatalog:
            raise not_registered("dataset", dataset_name, MetadataCatalog.list())
        meta = MetadataCatalog.get(dataset_name)
        missing = [k for k in ("dirname", "split", "year", "thing_classes") if meta.get(k) is None]
        if missing:
            raise ValueError(
                f"dataset '{dataset_name}' lacks metadata {missing} needed for VOC evaluation"
            )
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._anno_template = os.path.join(meta.dirname, "Annotations", "{}.xml")
        self._image_set_path = os.path.join(meta.dirname, "ImageSets", "Main", f"{meta.split}.txt")
        self._class_names = list(meta.thing_classes)
        self._is_2007 = int(meta.year) == 2007
        self._logger = logging.getLogger(__name__)
        self.reset()

    def reset(self) -> None:
        # per batch item: (image id as text, classes, scores, boxes), already rounded as detectron2
        # does
        self._predictions: List[Tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        if len(inputs) != len(outputs):
            raise ValueError(f"got {len(inputs)} inputs but {len(outputs)} outputs")
        num_classes = len(self._class_names)
        for inp, out in zip(inputs, outputs):
            instances = out["instances"].to("cpu")
            check_class_ids(
                instances.pred_classes, num_classes, inp["image_id"], self._dataset_name
            )
            classes = instances.pred_classes.numpy().astype(np.int64)
            boxes = instances.pred_boxes.tensor.numpy().copy()
            boxes[:, :2] += 1  # back to the 1-based pixel indices of the XML files
            scores = _round_text(np.asarray(instances.scores.tolist(), dtype=np.float64), 3)
            self._predictions.append(
                (str(inp["image_id"]), classes, scores, _round_text(boxes, 1).reshape(-1, 4))
            )

    def evaluate(self) -> Dict[str, Any]:
        if self._distributed:
            gathered = comm.gather(self._predictions, dst=0)
            if not comm.is_main_process():
                return {}
            predictions = [p for rank in gathered for p in rank]
        else:
            predictions = self._predictions
        self._logger.info(
            f"Evaluating {self._dataset_name} using the {2007 if self._is_2007 else 2012} metric "
            "(detectron2's Python port of the devkit, not the official Matlab code)"
        )
        image_names, records = self._load_ground_truth()
        index = {name: i for i, name in enumerate(image_names)}
        unknown = sorted({p[0] for p in predictions} - set(index))
        if unknown:
            raise ValueError(
                f"{len(unknown)} predicted images are not in {self._image_set_path} "
                f"(e.g. {unknown[0]!r})"
            )
        if predictions:
            img = np.concatenate([np.full(len(p[1]), index[p[0]]) for p in predictions])
            cls = np.concatenate([p[1] for p in predictions])
            score = np.concatenate([p[2] for p in predictions])
            box = np.concatenate([p[3] for p in predictions])
        else:
            img, cls, score, box = (
                np.zeros(0, np.int64),
                np.zeros(0, np.int64),
                np.zeros(0),
                np.zeros((0, 4)),
            )

        aps: Dict[int, List[float]] = {t: [] for t in _THRESHOLDS}
        for c, name in enumerate(self._class_names):
            sel = cls == c
            ap_per_thr = self._eval_class(name, records, img[sel], score[sel], box[sel])
            for t, ap in zip(_THRESHOLDS, ap_per_thr):
                aps[t].append(ap * 100)
        mAP = {t: np.mean(v) for t, v in aps.items()}
        result: Dict[str, float] = OrderedDict(
            AP=float(np.mean(list(mAP.values()))), AP50=float(mAP[50]), AP75=float(mAP[75])
        )
        per_class = [
            (n, float(np.mean([aps[t][c] for t in _THRESHOLDS])), float(aps[50][c]))
            for c, n in enumerate(self._class_names)
        ]
        for n, ap, ap50 in per_class:
            result[f"AP-{n}"] = ap
        for n, ap, ap50 in per_class:
            result[f"AP50-{n}"] = ap50
        main = ["AP", "AP50", "AP75"]
        self._logger.info(
            "Evaluation results for bbox:\n" + markdown_table(main, [[result[k] for k in main]])
        )
        self._logger.info(
            "Per-class VOC AP:\n" + markdown_table(["class", "AP", "AP50"], per_class)
        )
        return OrderedDict(bbox=result)

    def _load_ground_truth(self) -> Tuple[List[str], List[List[Dict[str, Any]]]]:
        try:
            with open(self._image_set_path) as f:
                names = [line.strip() for line in f if line.strip()]
        except FileNotFoundError:
            raise FileNotFoundError(
                f"VOC image set file not found: {self._image_set_path}"
            ) from None
        return names, [parse_voc_xml(self._anno_template.format(n)) for n in names]

    def _eval_class(
        self,
        name: str,
        records: List[List[Dict[str, Any]]],
        img: np.ndarray,
        score: np.ndarray,
        box: np.ndarray,
    ) -> List[float]:
        """AP of one class at every IoU threshold."""
        gt_img, gt_box, gt_diff = [], [], []
        for i, objs in enumerate(records):
            for o in objs:
                if o["name"] == name:
                    gt_img.append(i)
                    gt_box.append(o["bbox"])
                    gt_diff.append(o["difficult"])
        gt_img_a = np.asarray(gt_img, dtype=np.int64)
        gt_box_a = np.asarray(gt_box, dtype=np.float64).reshape(-1, 4)
        gt_diff_a = np.asarray(gt_diff, dtype=bool)
        npos = int(np.sum(~gt_diff_a))
        if npos == 0:
            self._logger.warning(
                f"class '{name}' has no (non-difficult) ground truth; its AP is undefined"
            )

        order = np.argsort(-score)  # the devkit's (unstable) sort, for identical tie order
        img, box = img[order], box[order]
        nd = len(img)
        ovmax, jmax = self._best_overlaps(img, box, gt_img_a, gt_box_a, len(records))
        aps = []
        for t in _THRESHOLDS:
            over = ovmax > t / 100.0
            candidate = (
                over & ~gt_diff_a[np.maximum(jmax, 0)] if len(gt_diff_a) else np.zeros(nd, bool)
            )
            tp = np.zeros(nd)
            cand_idx = np.flatnonzero(candidate)
            _, first = np.unique(
                jmax[cand_idx], return_index=True
            )  # first detection to take each gt
            tp[cand_idx[first]] = 1.0
            fp = (~over).astype(np.float64)
            fp[cand_idx] = 1.0 - tp[cand_idx]
            tp_c, fp_c = np.cumsum(tp), np.cumsum(fp)
            with np.errstate(divide="ignore", invalid="ignore"):
                rec = tp_c / float(npos)
            prec = tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)
            with np.errstate(invalid="ignore"):
                aps.append(voc_ap(rec, prec, self._is_2007))
        return aps

    @staticmethod
    def _best_overlaps(
        img: np.ndarray, box: np.ndarray, gt_img: np.ndarray, gt_box: np.ndarray, num_images: int
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Per detection: the highest IoU with a ground truth of its image (-inf if none) and its
        index."""
        nd = len(img)
        ovmax = np.full(nd, -np.inf)
        jmax = np.full(nd, -1, dtype=np.int64)
        if nd == 0 or len(gt_img) == 0:
            return ovmax, jmax
        gt_order = np.argsort(gt_img, kind="stable")  # already sorted; keeps file order per image
        bounds = np.searchsorted(gt_img[gt_order], np.arange(num_images + 1))
        n_gt = bounds[img + 1] - bounds[img]
        has = np.flatnonzero(n_gt > 0)
        if len(has) == 0:
            return ovmax, jmax
        counts = n_gt[has]
        seg_start = np.concatenate(([0], np.cumsum(counts)[:-1]))
        pair_det = np.repeat(has, counts)
        pair_gt = gt_order[
            np.repeat(bounds[img[has]] - seg_start, counts) + np.arange(len(pair_det))
        ]
        ov = _voc_iou(box[pair_det], gt_box[pair_gt])
        best = np.maximum.reduceat(ov, seg_start)
        pos = np.where(ov == np.repeat(best, counts), np.arange(len(ov)), len(ov))
        first = np.minimum.reduceat(pos, seg_start)  # np.argmax takes the first maximum
        ovmax[has] = best
        jmax[has] = pair_gt[np.minimum(first, len(ov) - 1)]
        return ovmax, jmax
