"""A vectorized re-implementation of pycocotools' ``COCOeval`` for boxes that gives identical
numbers.

``FastCOCOeval`` has COCOeval's interface (``params``, ``evaluate()``, ``accumulate()``,
``summarize()``, ``stats``, ``eval``) and reproduces its every rule, bit for bit:

* IoU as pycocotools' C ``bbIou`` (same float64 operations in the same order; for a crowd ground
  truth the union is the detection's area);
* detections sorted per image and category by score with a stable sort, cut to ``maxDets[-1]``;
* greedy matching per IoU threshold and area range: a detection takes the not yet matched regular
  ground truth with the highest IoU >= ``min(t, 1 - 1e-10)`` (the last one on ties); only when none
  qualifies may it take an ignored one (crowd ground truths can be taken many times); ground truths
  ``iscrowd`` or outside the area range are ignored, as are unmatched detections outside it;
* accumulation over images in ``params.imgIds`` order with a stable sort by score, precision made
  monotone and read at the 101 recall thresholds, -1 where a category has no ground truth;
* ``stats``: the 12 standard numbers; the AP numbers use ``maxDets[2]`` as detectron2's
  ``COCOevalMaxDets`` does (the same as pycocotools for the default ``[1, 10, 100]``).

Instead of Python loops over every (image, category, area, threshold, detection, ground truth),
the matching runs once per detection rank over all images, categories, thresholds and area ranges
at once. Only ``iouType="bbox"`` with ``useCats=1`` is supported. Detections can be given as a
``COCO`` object (from ``loadRes``), or directly as the list of result dicts or as
:class:`DetectionColumns`, which skips ``loadRes``.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any, Dict, Hashable, List, Optional, Sequence, Union

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import Params

__all__ = ["FastCOCOeval", "DetectionColumns", "summarize_coco_eval", "STAT_NAMES"]

# Names of the 12 numbers of ``stats`` (detectron2's names for the 6 AP; AR at maxDets 1/10/100).
STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)


@dataclass
class _Boxes:
    """Annotations of one side (ground truth or detections) as flat arrays."""

    img: np.ndarray  # index into params.imgIds
    cat: np.ndarray  # index into params.catIds
    box: np.ndarray  # (N, 4) float64 xywh
    area: np.ndarray  # float64
    crowd: np.ndarray  # bool (always False for detections)
    ids: np.ndarray  # int64 annotation ids
    score: np.ndarray  # float64 (zeros for ground truth)

    def take(self, index: np.ndarray) -> "_Boxes":
        """The annotations at ``index`` (an index array or a boolean mask)."""
        return _Boxes(*(getattr(self, f)[index] for f in self.__dataclass_fields__))


@dataclass
class DetectionColumns:
    """Detections as columns, an alternative to a list of COCO result dicts (no per-detection
    dicts).

    ``image_id`` and ``category_id`` are dataset ids, ``bbox`` is (N, 4) xywh, ``score`` (N,).
    """

    image_id: Sequence[Hashable]
    category_id: np.ndarray
    bbox: np.ndarray
    score: np.ndarray

    def __post_init__(self) -> None:
        self.category_id = np.asarray(self.category_id)
        self.bbox = np.asarray(self.bbox, dtype=np.float64).reshape(-1, 4)
        self.score = np.asarray(self.score, dtype=np.float64)
        n = len(self.image_id)
        if not (len(self.category_id) == len(self.bbox) == len(self.score) == n):
            raise ValueError(
                f"DetectionColumns: lengths differ (image_id {n}, "
                f"category_id {len(self.category_id)}, "
                f"bbox {len(self.bbox)}, score {len(self.score)})"
            )

    def __len__(self) -> int:
        return len(self.image_id)

    @classmethod
    def from_results(cls, results: Sequence[Dict[str, Any]]) -> "DetectionColumns":
        """Columns of a list of COCO result dicts."""
        return cls(
            [r["image_id"] for r in results],
            np.asarray([r["category_id"] for r in results]),
            np.asarray([r["bbox"] for r in results], dtype=np.float64).reshape(-1, 4),
            np.asarray([r["score"] for r in results], dtype=np.float64),
        )


def _lookup(keys: Sequence[Hashable], index: Dict[Hashable, int]) -> np.ndarray:
    """``index[key]`` (or -1) for every key, looking each distinct key up once."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    try:
        uniq, inverse = np.unique(np.asarray(keys), return_inverse=True)
    except TypeError:  # keys that do not sort: one lookup per key
        return np.asarray([index.get(k, -1) for k in keys], dtype=np.int64)
    table = np.asarray([index.get(k, -1) for k in uniq.tolist()], dtype=np.int64)
    return table[inverse.reshape(-1)]


def _columns_to_arrays(
    cols: DetectionColumns, img_index: Dict[Hashable, int], cat_index: Dict[Hashable, int]
) -> _Boxes:
    img = _lookup(cols.image_id, img_index)
    cat = _lookup(cols.category_id, cat_index)
    keep = np.flatnonzero((img >= 0) & (cat >= 0))
    box = cols.bbox[keep]
    return _Boxes(
        img[keep],
        cat[keep],
        box,
        box[:, 2] * box[:, 3],
        np.zeros(len(keep), dtype=bool),
        keep.astype(np.int64) + 1,
        cols.score[keep],
    )


def _check_images(anns: Union[Sequence[Dict[str, Any]], DetectionColumns], coco_gt: COCO) -> None:
    """Refuse detections on images the ground truth does not have (as ``COCO.loadRes`` does)."""
    ids = anns.image_id if isinstance(anns, DetectionColumns) else [a["image_id"] for a in anns]
    known = {i: 0 for i in coco_gt.imgs}
    missing = np.flatnonzero(_lookup(ids, known) < 0)
    if len(missing):
        raise ValueError(
            f"{len(missing)} detections refer to images that are not in the ground truth "
            f"(e.g. image_id={ids[missing[0]]!r}); results do not correspond to this dataset"
        )


def _to_arrays(
    anns: Sequence[Dict[str, Any]],
    img_index: Dict[Hashable, int],
    cat_index: Dict[Hashable, int],
    is_gt: bool,
) -> _Boxes:
    """Keep annotations of evaluated images and categories (in their order) as arrays."""
    img_list = [img_index.get(a["image_id"], -1) for a in anns]
    img = np.asarray(img_list, dtype=np.int64)
    cat = np.asarray([cat_index.get(a["category_id"], -1) for a in anns], dtype=np.int64)
    keep = np.flatnonzero((img >= 0) & (cat >= 0))
    kept = [anns[i] for i in keep.tolist()]
    try:
        box = np.asarray([a["bbox"] for a in kept], dtype=np.float64).reshape(-1, 4)
    except ValueError as e:
        raise ValueError(
            f"every {'ground truth' if is_gt else 'detection'} bbox must be 4 numbers: {e}"
        ) from None
    if is_gt:
        try:
            area = np.asarray([a["area"] for a in kept], dtype=np.float64)
        except KeyError:
            raise KeyError("ground-truth annotations need an 'area' field (COCO format)") from None
        crowd = np.asarray([bool(a.get("iscrowd", 0)) for a in kept], dtype=bool)
        ids = np.asarray([a["id"] for a in kept], dtype=np.int64)
        score = np.zeros(len(kept))
    else:
        # loadRes sets area = w * h; a result list gets the same product here.
        area = np.asarray(
            [a["area"] if "area" in a else a["bbox"][2] * a["bbox"][3] for a in kept],
            dtype=np.float64,
        )
        crowd = np.zeros(len(kept), dtype=bool)
        ids = keep.astype(np.int64) + 1  # loadRes numbers results 1, 2, ... in list order
        score = np.asarray([a["score"] for a in kept], dtype=np.float64)
    return _Boxes(img[keep], cat[keep], box, area, crowd, ids, score)


def _box_iou(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of paired xywh boxes with exactly the float64 operations of pycocotools' ``bbIou``."""
    w = np.minimum(d[:, 2] + d[:, 0], g[:, 2] + g[:, 0]) - np.maximum(d[:, 0], g[:, 0])
    h = np.minimum(d[:, 3] + d[:, 1], g[:, 3] + g[:, 1]) - np.maximum(d[:, 1], g[:, 1])
    inter = w * h
    da = d[:, 2] * d[:, 3]
    ga = g[:, 2] * g[:, 3]
    union = np.where(crowd, da, da + ga - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((w > 0) & (h > 0), iou, 0.0)


def _group_bounds(sorted_keys: np.ndarray, num_keys: int) -> np.ndarray:
    """``starts`` of length num_keys + 1 such that key k occupies [starts[k], starts[k+1])."""
    return np.searchsorted(sorted_keys, np.arange(num_keys + 1), side="left")


class FastCOCOeval:
    """``pycocotools.cocoeval.COCOeval`` for ``iouType="bbox"``, vectorized; same numbers, much
    faster."""

    def __init__(
        self,
        cocoGt: COCO,
        cocoDt: Union[COCO, Sequence[Dict[str, Any]], DetectionColumns, None] = None,
        iouType: str = "bbox",
    ) -> None:
        if iouType != "bbox":
            raise NotImplementedError(f"FastCOCOeval evaluates boxes only, got iouType={iouType!r}")
        self.cocoGt = cocoGt
        self.cocoDt = cocoDt
        self.params = Params(iouType=iouType)
        self.params.imgIds = sorted(cocoGt.getImgIds())
        self.params.catIds = sorted(cocoGt.getCatIds())
        self.eval: Dict[str, Any] = {}
        self.stats: Union[List[float], np.ndarray] = []
        self._state: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------ evaluate
    def evaluate(self) -> None:
        """Match detections to ground truth for every image, category, area range and IoU
        threshold."""
        p = self.params
        if not p.useCats:
            raise NotImplementedError("FastCOCOeval supports useCats=1 only")
        p.imgIds = list(np.unique(p.imgIds))
        p.catIds = list(np.unique(p.catIds))
        p.maxDets = sorted(p.maxDets)
        img_index = {i: n for n, i in enumerate(p.imgIds)}
        cat_index = {c: n for n, c in enumerate(p.catIds)}
        num_img, num_cat = len(p.imgIds), len(p.catIds)

        gt = _to_arrays(self.cocoGt.dataset.get("annotations", []), img_index, cat_index, True)
        if self.cocoDt is None:
            raise ValueError("FastCOCOeval needs detections (cocoDt)")
        if isinstance(self.cocoDt, COCO):
            dt = _to_arrays(self.cocoDt.dataset.get("annotations", []), img_index, cat_index, False)
        elif isinstance(self.cocoDt, DetectionColumns):
            _check_images(self.cocoDt, self.cocoGt)
            dt = _columns_to_arrays(self.cocoDt, img_index, cat_index)
        else:
            dt_anns = list(self.cocoDt)
            _check_images(dt_anns, self.cocoGt)
            dt = _to_arrays(dt_anns, img_index, cat_index, False)

        # ground truth grouped by (image, category), dataset order inside a group
        gt_group = gt.img * num_cat + gt.cat
        order = np.argsort(gt_group, kind="stable")
        gt = gt.take(order)
        gt_group = gt_group[order]
        gt_bounds = _group_bounds(gt_group, num_img * num_cat)

        # detections grouped by (image, category), by score (stable), cut to maxDets[-1]
        dt_group = dt.img * num_cat + dt.cat
        order = np.lexsort((np.arange(len(dt_group)), -dt.score, dt_group))
        dt = dt.take(order)
        dt_group = dt_group[order]
        first = _group_bounds(dt_group, num_img * num_cat)
        rank = np.arange(len(dt_group)) - first[dt_group]
        keep = rank < p.maxDets[-1]
        dt = dt.take(keep)
        dt_group, rank = dt_group[keep], rank[keep]

        area_rng = np.asarray(p.areaRng, dtype=np.float64)
        gt_ignore = (
            gt.crowd[None, :]
            | (gt.area[None, :] < area_rng[:, :1])
            | (gt.area[None, :] > area_rng[:, 1:])
        )
        dt_out = (dt.area[None, :] < area_rng[:, :1]) | (dt.area[None, :] > area_rng[:, 1:])
        dtm, dt_ignore = self._match(dt, dt_group, rank, gt, gt_bounds, gt_ignore)
        dt_ignore |= ~dtm & dt_out[None, :, :]  # unmatched detections outside the area range

        # order of accumulate(): per category by score, stable over (image, rank) as pycocotools
        # concatenates
        order = np.lexsort((rank, dt.img, -dt.score, dt.cat))
        self._state = dict(
            dt_cat=dt.cat[order],
            dt_rank=rank[order],
            dt_score=dt.score[order],
            tps=(dtm & ~dt_ignore)[:, :, order],
            fps=(~dtm & ~dt_ignore)[:, :, order],
            gt_cat=gt.cat,
            gt_ignore=gt_ignore,
        )
        self._paramsEval = p

    def _match(
        self,
        dt: _Boxes,
        dt_group: np.ndarray,
        rank: np.ndarray,
        gt: _Boxes,
        gt_bounds: np.ndarray,
        gt_ignore: np.ndarray,
    ) -> "tuple[np.ndarray, np.ndarray]":
        """Greedy matching, one detection rank at a time for all groups, thresholds and areas at
        once.

        Returns (T, A, D) boolean arrays: ``dtm``, matched (to a gt whose id is not 0: pycocotools
        records the gt id, so id 0 reads as "unmatched" afterwards), and ``ignored``, matched to an
        ignored gt.
        """
        p = self.params
        num_t, num_a, num_d = len(p.iouThrs), len(p.areaRng), len(dt_group)
        dtm = np.zeros((num_t, num_a, num_d), dtype=bool)
        match_ignored = np.zeros((num_t, num_a, num_d), dtype=bool)
        if num_d == 0 or len(gt.img) == 0:
            return dtm, match_ignored
        thr = np.minimum(np.asarray(p.iouThrs, dtype=np.float64), 1 - 1e-10)

        # every (detection, ground truth) pair of a group, detections ordered by rank
        det_order = np.lexsort((dt_group, rank))
        n_gt = (gt_bounds[1:] - gt_bounds[:-1])[dt_group[det_order]]
        has_pairs = n_gt > 0
        det_order, n_gt = det_order[has_pairs], n_gt[has_pairs]
        if len(det_order) == 0:
            return dtm, match_ignored
        pair_det = np.repeat(det_order, n_gt)
        seg_start = np.concatenate(([0], np.cumsum(n_gt)[:-1]))
        pair_gt = np.repeat(gt_bounds[dt_group[det_order]] - seg_start, n_gt) + np.arange(
            len(pair_det)
        )
        iou = _box_iou(dt.box[pair_det], gt.box[pair_gt], gt.crowd[pair_gt])

        gt_used = np.zeros((num_t, num_a, len(gt.img)), dtype=bool)
        det_rank = rank[det_order]
        rank_bounds = np.searchsorted(det_rank, np.arange(det_rank.max() + 2), side="left")
        for r in range(len(rank_bounds) - 1):
            d0, d1 = rank_bounds[r], rank_bounds[r + 1]
            if d0 == d1:
                continue
            p0, p1 = seg_start[d0], (seg_start[d1] if d1 < len(seg_start) else len(pair_det))
            starts = seg_start[d0:d1] - p0
            seg_of_pair = np.repeat(np.arange(d1 - d0), n_gt[d0:d1])
            g = pair_gt[p0:p1]
            v = iou[p0:p1]
            above = (v[None, :] >= thr[:, None])[:, None, :]  # (T, 1, n)
            ign = gt_ignore[:, g][None, :, :]  # (1, A, n)
            used = gt_used[:, :, g]  # (T, A, n)
            regular = above & ~ign & ~used
            ignored = above & ign & (gt.crowd[g] | ~used)
            has_regular = np.logical_or.reduceat(regular, starts, axis=2)
            eligible = np.where(has_regular[:, :, seg_of_pair], regular, ignored)
            val = np.where(eligible, v, -1.0)
            best = np.maximum.reduceat(val, starts, axis=2)
            hit = eligible & (val == best[:, :, seg_of_pair])
            choice = np.maximum.reduceat(np.where(hit, np.arange(p1 - p0), -1), starts, axis=2)
            ti, ai, di = np.nonzero(choice >= 0)
            pick = choice[ti, ai, di]
            gi = g[pick]
            gt_used[ti, ai, gi] = True
            dets = det_order[d0 + di]
            dtm[ti, ai, dets] = gt.ids[gi] != 0
            match_ignored[ti, ai, dets] = gt_ignore[ai, gi]
        return dtm, match_ignored

    # ------------------------------------------------------------------ accumulate
    def accumulate(self) -> None:
        """Precision/recall/scores arrays ``[T, R, K, A, M]`` exactly as ``COCOeval.accumulate``."""
        if self._state is None:
            raise RuntimeError("call evaluate() before accumulate()")
        p, s = self.params, self._state
        T, R, K, A, M = (
            len(p.iouThrs),
            len(p.recThrs),
            len(p.catIds),
            len(p.areaRng),
            len(p.maxDets),
        )
        precision = -np.ones((T, R, K, A, M))
        recall = -np.ones((T, K, A, M))
        scores = -np.ones((T, R, K, A, M))
        rec_thrs = np.asarray(p.recThrs)

        npig = np.zeros((K, A), dtype=np.int64)
        np.add.at(npig, s["gt_cat"], (~s["gt_ignore"]).T.astype(np.int64))
        cat_bounds = _group_bounds(s["dt_cat"], K)
        for k in range(K):
            c0, c1 = cat_bounds[k], cat_bounds[k + 1]
            rank_k = s["dt_rank"][c0:c1]
            for m, max_det in enumerate(p.maxDets):
                sel = (
                    slice(c0, c1)
                    if (rank_k < max_det).all()
                    else c0 + np.flatnonzero(rank_k < max_det)
                )
                score_sorted = s["dt_score"][sel]
                tp_sum = np.cumsum(s["tps"][:, :, sel], axis=2).astype(float)
                fp_sum = np.cumsum(s["fps"][:, :, sel], axis=2).astype(float)
                nd = len(score_sorted)
                for a in range(A):
                    if npig[k, a] == 0:
                        continue
                    tp, fp = tp_sum[:, a], fp_sum[:, a]
                    rc = tp / npig[k, a]
                    pr = tp / (fp + tp + np.spacing(1))
                    recall[:, k, a, m] = rc[:, -1] if nd else 0
                    if nd == 0:
                        precision[:, :, k, a, m] = 0
                        scores[:, :, k, a, m] = 0
                        continue
                    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                    for t in range(T):
                        inds = np.searchsorted(rc[t], rec_thrs, side="left")
                        valid = inds < nd
                        q = np.zeros(R)
                        ss = np.zeros(R)
                        # pycocotools fills thresholds in order and stops at the first one out
                        # of range
                        n_ok = R if valid.all() else int(np.argmin(valid))
                        q[:n_ok] = pr[t, inds[:n_ok]]
                        ss[:n_ok] = score_sorted[inds[:n_ok]]
                        precision[t, :, k, a, m] = q
                        scores[t, :, k, a, m] = ss
        self.eval = {
            "params": p,
            "counts": [T, R, K, A, M],
            "precision": precision,
            "recall": recall,
            "scores": scores,
        }

    # ------------------------------------------------------------------ summarize
    def summarize(self) -> None:
        """Compute ``stats`` (12 numbers) and print them as pycocotools does."""
        if not self.eval:
            raise RuntimeError("call accumulate() before summarize()")
        self.stats, lines = summarize_coco_eval(
            self.eval["precision"], self.eval["recall"], self.params
        )
        print("\n".join(lines))


def summarize_coco_eval(
    precision: np.ndarray, recall: np.ndarray, params: Any
) -> "tuple[np.ndarray, List[str]]":
    """The 12 COCO numbers (and pycocotools' printed lines) from accumulated precision/recall.

    AP uses ``maxDets[2]`` (detectron2's ``COCOevalMaxDets``), identical to pycocotools for the
    default ``maxDets=[1, 10, 100]``; -1 where nothing can be computed.
    """
    p = params
    lines: List[str] = []

    def one(
        ap: bool, iou_thr: Optional[float] = None, area: str = "all", max_dets: int = 100
    ) -> float:
        aind = [i for i, lbl in enumerate(p.areaRngLbl) if lbl == area]
        mind = [i for i, md in enumerate(p.maxDets) if md == max_dets]
        s = precision if ap else recall
        if iou_thr is not None:
            s = s[np.where(iou_thr == p.iouThrs)[0]]
        s = s[:, :, :, aind, mind] if ap else s[:, :, aind, mind]
        mean = -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))
        iou_str = (
            f"{p.iouThrs[0]:0.2f}:{p.iouThrs[-1]:0.2f}" if iou_thr is None else f"{iou_thr:0.2f}"
        )
        title, kind = ("Average Precision", "(AP)") if ap else ("Average Recall", "(AR)")
        lines.append(
            f" {title:<18} {kind} @[ IoU={iou_str:<9} | area={area:>6s} | maxDets={max_dets:>3d} ]"
            f" = {mean:0.3f}"
        )
        return mean

    md = p.maxDets
    stats = np.array(
        [
            one(True, max_dets=md[2]),
            one(True, iou_thr=0.5, max_dets=md[2]),
            one(True, iou_thr=0.75, max_dets=md[2]),
            one(True, area="small", max_dets=md[2]),
            one(True, area="medium", max_dets=md[2]),
            one(True, area="large", max_dets=md[2]),
            one(False, max_dets=md[0]),
            one(False, max_dets=md[1]),
            one(False, max_dets=md[2]),
            one(False, area="small", max_dets=md[2]),
            one(False, area="medium", max_dets=md[2]),
            one(False, area="large", max_dets=md[2]),
        ]
    )
    return stats, lines


def quiet_coco(dataset: Union[str, Dict[str, Any]]) -> COCO:
    """A ``COCO`` object from a json path or dict, without pycocotools' prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(dataset, str):
            return COCO(dataset)
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
        return coco
