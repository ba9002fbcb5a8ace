"""Image classification training of the ResNets, on the detection engine (``tools/train_cls.py``).

* :mod:`.config`: :func:`get_cls_cfg` (the ImageNet and CIFAR-10 recipes of He et al. 2016);
* :mod:`.data`: ImageFolder / CIFAR-10 (python batches, read without unpickling arbitrary objects),
  the standard transforms, exactly resumable loaders;
* :mod:`.trainer`: :class:`ClassificationTrainer` (launcher, AMP, checkpoints, resume, metrics,
  progress bars, top-1/top-5 evaluation);
* :mod:`.test_protocols`: the paper's test protocols (``TEST.PROTOCOLS``): single center crop,
  10-crop, fully-convolutional multi-scale.

A checkpoint written here (``OUTPUT_DIR/model_final.pth``) initializes a C4 detector through
``MODEL.WEIGHTS``: backbone weights are mapped, the classifier is dropped, every key is reported.
"""

from . import data as _data
from . import test_protocols as _test_protocols
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
    resize_size,
)
from .test_protocols import (
    PAPER_SCALES,
    PROTOCOLS,
    FullyConvolutionalClassifier,
    MultiScaleEnsemble,
    MultiScaleViews,
    TenCrop,
    TenCropEnsemble,
    build_protocol_loader,
    check_protocols,
    describe,
    multiscale_sizes,
    protocol_model,
    result_name,
    ten_crop,
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
    evaluate_protocols,
    load_classifier_weights,
    resolve_device,
)

__all__ = [
    "RECIPES",
    "get_cls_cfg",
    *_data.__all__,
    *_test_protocols.__all__,
    *_trainer.__all__,
]
