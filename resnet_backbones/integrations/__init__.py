"""Use our ResNets inside other frameworks' detectors.

* :mod:`resnet_backbones.integrations.torchvision`: torchvision's ``FasterRCNN`` and ``MaskRCNN``
  in the C4 layout (:func:`~resnet_backbones.integrations.torchvision.fasterrcnn_resnet_c4`,
  :func:`~resnet_backbones.integrations.torchvision.maskrcnn_resnet_c4`), their parts, and an
  FPN backbone (:func:`~resnet_backbones.integrations.torchvision.resnet_fpn_backbone`).
* :mod:`resnet_backbones.integrations.detectron2`: importing it registers
  ``build_rb_resnet_backbone`` (and the ``RBRes5ROIHeads`` C4 head) in detectron2's registries;
  :func:`~resnet_backbones.integrations.detectron2.add_rb_config` adds our config keys.

Nothing is imported here: each submodule imports its framework only when it is imported itself,
so ``import resnet_backbones`` never needs detectron2.
"""
