"""Weights I/O: read any supported checkpoint safely, convert names, load with a full report.

* :mod:`.safe_pickle`: a restricted unpickler for ``.pkl`` files (containers and numpy arrays only).
* :mod:`.converters`: renaming between ours (= detectron2's ResNet names), detectron2, torchvision,
  timm and MSRA/Caffe2 blob names.
* :mod:`.loading`: :func:`read_checkpoint`, :func:`load_state_dict_with_report`,
  :func:`load_checkpoint`, :func:`save_checkpoint`.
* :mod:`.file_conversion`: :func:`convert_checkpoint_file` (behind ``tools/convert_weights.py``).
"""

from .converters import (
    FORMATS,
    INPUT_CONVENTIONS,
    SOURCE_FORMATS,
    TARGET_FORMATS,
    ConversionResult,
    FormatDetectionError,
    convert_state_dict,
    detect_format,
    detectron2_to_ours,
    from_ours,
    infer_resnet_architecture,
    msra_to_ours,
    ours_to_detectron2,
    ours_to_msra,
    ours_to_torchvision,
    to_ours,
    torchvision_to_ours,
)
from .file_conversion import FileConversion, check_resnet_state_dict, convert_checkpoint_file
from .loading import (
    CheckpointError,
    CheckpointFormatError,
    LoadedCheckpoint,
    LoadReport,
    StateDictLoadError,
    align_to_model,
    load_checkpoint,
    load_state_dict_file,
    load_state_dict_with_report,
    read_checkpoint,
    save_checkpoint,
)
from .safe_pickle import RestrictedUnpickler, UnsafePickleError, safe_load, safe_loads

__all__ = [
    "FORMATS",
    "INPUT_CONVENTIONS",
    "SOURCE_FORMATS",
    "TARGET_FORMATS",
    "ConversionResult",
    "FormatDetectionError",
    "convert_state_dict",
    "detect_format",
    "detectron2_to_ours",
    "from_ours",
    "infer_resnet_architecture",
    "msra_to_ours",
    "ours_to_detectron2",
    "ours_to_msra",
    "ours_to_torchvision",
    "to_ours",
    "torchvision_to_ours",
    "FileConversion",
    "check_resnet_state_dict",
    "convert_checkpoint_file",
    "CheckpointError",
    "CheckpointFormatError",
    "LoadedCheckpoint",
    "LoadReport",
    "StateDictLoadError",
    "align_to_model",
    "load_checkpoint",
    "load_state_dict_file",
    "load_state_dict_with_report",
    "read_checkpoint",
    "save_checkpoint",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "safe_load",
    "safe_loads",
]
