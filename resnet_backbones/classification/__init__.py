"""Image classification training of the ResNets, on the detection engine (``tools/train_cls.py``).

* :mod:`.config`: :func:`get_cls_cfg` (the ImageNet and CIFAR-10 recipes of He et al. 2016);
* :mod:`.data`: ImageFolder / CIFAR-10 (python batches, read without unpickling arbitrary objects),
  the standard transforms, exactly resumable loaders;
* :mod:`.trainer`: :class:`ClassificationTrainer` (launcher, AMP, checkpoints, resume, metrics,
  progress bars, top-1/top-5 evaluation).

A checkpoint written here (``OUTPUT_DIR/model_final.pth``) initializes a C4 detector through
``MODEL.WEIGHTS``: backbone weights are mapped, the classifier is dropped, every key is reported.
"""

from . import data as _data
from . import trainer as _trainer
from .config import RECIPES, get_cls_cfg
from .data import (
    CIFAR10,
    CIFAR10_CLASSES,
    ToModelInput,
    build_dataset,
    build_test_loader,
    build_train_loader,
    build_transform,
    find_cifar10_dir,
    read_cifar10_batch,
)
from .trainer import (
    ClassificationCheckpointer,
    ClassificationTrainer,
    ClassifierWithLoss,
    ProgressBar,
    Schedule,
    build_classifier,
    build_lr_scheduler,
    build_optimizer,
    checkpoint_metadata,
    compute_schedule,
    evaluate,
    load_classifier_weights,
    resolve_device,
)

__all__ = ["RECIPES", "get_cls_cfg", *_data.__all__, *_trainer.__all__]
