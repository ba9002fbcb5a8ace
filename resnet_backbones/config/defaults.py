"""Default configuration: detectron2's key names and default values for a C4 Faster R-CNN.

Every key that detectron2 also has carries detectron2's default (``detectron2/config/defaults.py``),
so a detectron2 user reads the same numbers here. Keys that detectron2 does not have are marked
"ours" and live under clearly named keys (mostly in ``MODEL.RESNETS``).
"""

from .config import CfgNode as CN

_C = CN()
_C.VERSION = 2

# ---------------------------------------------------------------------------- #
# Model
# ---------------------------------------------------------------------------- #
_C.MODEL = CN()
_C.MODEL.LOAD_PROPOSALS = False
_C.MODEL.MASK_ON = False
_C.MODEL.KEYPOINT_ON = False
_C.MODEL.DEVICE = "cuda"
_C.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
# A checkpoint: ours (.pth), torchvision/timm (.pth), MSRA/Caffe2 or detectron2 (.pkl).
_C.MODEL.WEIGHTS = ""
# ours: the C4 fast path, applied by resnet_backbones.modeling.prepare_model (DefaultTrainer,
# train_net --eval-only, DefaultPredictor, export, benchmarks): RoIAlign only at the bins res5
# reads, channels_last, and FrozenBN applied through the conv weights (training: same state dict)
# or folded into them (inference, after loading). Results equal up to float rounding (~1e-5
# relative); False runs exactly detectron2's operations.
_C.MODEL.FAST_PATH = True
# Pixel statistics in the order of INPUT.FORMAT. Defaults are MSRA's (BGR, std 1.0, 0-255 range).
_C.MODEL.PIXEL_MEAN = [103.530, 116.280, 123.675]
_C.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]

# ---------------------------------------------------------------------------- #
# Input
# ---------------------------------------------------------------------------- #
_C.INPUT = CN()
_C.INPUT.MIN_SIZE_TRAIN = (800,)
_C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"  # "choice" or "range"
_C.INPUT.MAX_SIZE_TRAIN = 1333
_C.INPUT.MIN_SIZE_TEST = 800  # 0 disables resizing at test time
_C.INPUT.MAX_SIZE_TEST = 1333
_C.INPUT.RANDOM_FLIP = "horizontal"  # "horizontal", "vertical" or "none"
_C.INPUT.CROP = CN({"ENABLED": False})
_C.INPUT.CROP.TYPE = "relative_range"
_C.INPUT.CROP.SIZE = [0.9, 0.9]
_C.INPUT.FORMAT = "BGR"  # "BGR" or "RGB"
_C.INPUT.MASK_FORMAT = "polygon"  # "polygon" or "bitmask"

# ---------------------------------------------------------------------------- #
# Datasets and data loading
# ---------------------------------------------------------------------------- #
_C.DATASETS = CN()
_C.DATASETS.TRAIN = ()
_C.DATASETS.PROPOSAL_FILES_TRAIN = ()
_C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN = 2000
_C.DATASETS.TEST = ()
_C.DATASETS.PROPOSAL_FILES_TEST = ()
_C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST = 1000

_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
_C.DATALOADER.ASPECT_RATIO_GROUPING = True
_C.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"
_C.DATALOADER.REPEAT_THRESHOLD = 0.0
_C.DATALOADER.REPEAT_SQRT = True
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True
# A bad single annotation (empty box, box outside the image, unknown category, malformed record):
# "skip" drops it and warns once per file with the counts; "error" stops, naming the file and value.
_C.DATALOADER.ON_BAD_ANNOTATION = "skip"

# ---------------------------------------------------------------------------- #
# Backbone
# ---------------------------------------------------------------------------- #
_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.NAME = "build_resnet_backbone"
# 0: train everything; 1: freeze the stem; 2: stem and res2; ... 5: up to res5.
_C.MODEL.BACKBONE.FREEZE_AT = 2

_C.MODEL.RESNETS = CN()
_C.MODEL.RESNETS.DEPTH = 50
_C.MODEL.RESNETS.OUT_FEATURES = ["res4"]  # res4 for a C4 backbone
_C.MODEL.RESNETS.NUM_GROUPS = 1
_C.MODEL.RESNETS.NORM = "FrozenBN"  # "FrozenBN", "BN", "SyncBN", "GN" or ""
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64
# True: stride 2 in the first 1x1 conv of a bottleneck (MSRA "v1"); False: in the 3x3 (torchvision).
_C.MODEL.RESNETS.STRIDE_IN_1X1 = True
_C.MODEL.RESNETS.RES5_DILATION = 1  # 1 or 2
# res2 output channels: 256 for bottleneck ResNets, 64 for R18/R34 (detectron2 requires 64 there;
# ours: any width but the bottleneck default 256, e.g. 32 for a narrow ResNet-18).
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
_C.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, False, False]
_C.MODEL.RESNETS.DEFORM_MODULATED = False
_C.MODEL.RESNETS.DEFORM_NUM_GROUPS = 1
# ours: shortcut option of the ResNet paper (Sec. 3.3): "A" zero-padded identity, "B" projection
# where the shape changes, "C" projection everywhere.
_C.MODEL.RESNETS.SHORTCUT = "B"
# ours: pre-activation blocks (He et al., ECCV 2016): BN-ReLU-conv with a clean identity path.
_C.MODEL.RESNETS.PREACT = False
# ours: run the backbone in channels_last memory format.
_C.MODEL.RESNETS.CHANNELS_LAST = False
# ours: initialise the last norm's gamma of every residual block to zero.
_C.MODEL.RESNETS.ZERO_INIT_RESIDUAL = False
# ours: the C4 box head's res5 stage (Res5ROIHeads). "bottleneck" (detectron2): three bottleneck
# blocks whatever DEPTH is. "basic": ResNet-18/34's own res5 (2 / 3 basic blocks of
# 8 x RES2_OUT_CHANNELS), so that a ResNet-18/34 classifier initialises the whole head.
_C.MODEL.RESNETS.RES5_HEAD_BLOCK = "bottleneck"

# ---------------------------------------------------------------------------- #
# Proposal generator (RPN) and anchors
# ---------------------------------------------------------------------------- #
_C.MODEL.PROPOSAL_GENERATOR = CN()
_C.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"
_C.MODEL.PROPOSAL_GENERATOR.MIN_SIZE = 0

_C.MODEL.ANCHOR_GENERATOR = CN()
_C.MODEL.ANCHOR_GENERATOR.NAME = "DefaultAnchorGenerator"
_C.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 64, 128, 256, 512]]
_C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
_C.MODEL.ANCHOR_GENERATOR.ANGLES = [[-90, 0, 90]]
_C.MODEL.ANCHOR_GENERATOR.OFFSET = 0.0

_C.MODEL.RPN = CN()
_C.MODEL.RPN.HEAD_NAME = "StandardRPNHead"
_C.MODEL.RPN.IN_FEATURES = ["res4"]
_C.MODEL.RPN.BOUNDARY_THRESH = -1
_C.MODEL.RPN.IOU_THRESHOLDS = [0.3, 0.7]
_C.MODEL.RPN.IOU_LABELS = [0, -1, 1]
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256
_C.MODEL.RPN.POSITIVE_FRACTION = 0.5
_C.MODEL.RPN.BBOX_REG_LOSS_TYPE = "smooth_l1"
_C.MODEL.RPN.BBOX_REG_LOSS_WEIGHT = 1.0
_C.MODEL.RPN.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
_C.MODEL.RPN.SMOOTH_L1_BETA = 0.0
_C.MODEL.RPN.LOSS_WEIGHT = 1.0
_C.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 12000
_C.MODEL.RPN.PRE_NMS_TOPK_TEST = 6000
_C.MODEL.RPN.POST_NMS_TOPK_TRAIN = 2000
_C.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.NMS_THRESH = 0.7
_C.MODEL.RPN.CONV_DIMS = [-1]

# ---------------------------------------------------------------------------- #
# RoI heads (Res5ROIHeads: the res5 stage is the per-RoI box head)
# ---------------------------------------------------------------------------- #
_C.MODEL.ROI_HEADS = CN()
_C.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
_C.MODEL.ROI_HEADS.NUM_CLASSES = 80
_C.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
_C.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.5]
_C.MODEL.ROI_HEADS.IOU_LABELS = [0, 1]
_C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
_C.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
_C.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
_C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5
_C.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = True

_C.MODEL.ROI_BOX_HEAD = CN()
_C.MODEL.ROI_BOX_HEAD.NAME = ""
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = "smooth_l1"
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT = 1.0
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
_C.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = 0.0
_C.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
_C.MODEL.ROI_BOX_HEAD.NUM_FC = 0
_C.MODEL.ROI_BOX_HEAD.FC_DIM = 1024
_C.MODEL.ROI_BOX_HEAD.NUM_CONV = 0
_C.MODEL.ROI_BOX_HEAD.CONV_DIM = 256
_C.MODEL.ROI_BOX_HEAD.NORM = ""
_C.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False
_C.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES = False
_C.MODEL.ROI_BOX_HEAD.USE_FED_LOSS = False
_C.MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE = False
_C.MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER = 0.5
_C.MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES = 50

# Mask head (Mask R-CNN; MODEL.MASK_ON). In the C4 model the mask head reads the res5 output of
# each RoI (7x7), so the POOLER_* keys are not read there (detectron2 reads them only with FPN).
_C.MODEL.ROI_MASK_HEAD = CN()
_C.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
_C.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_MASK_HEAD.NUM_CONV = 0  # 3x3 convs before the 2x upsampling deconv
_C.MODEL.ROI_MASK_HEAD.CONV_DIM = 256
_C.MODEL.ROI_MASK_HEAD.NORM = ""  # norm of those convs: "" or a name for get_norm ("GN", ...)
_C.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = False  # True: one mask channel for all classes
_C.MODEL.ROI_MASK_HEAD.POOLER_TYPE = "ROIAlignV2"

# ---------------------------------------------------------------------------- #
# Solver
# ---------------------------------------------------------------------------- #
_C.SOLVER = CN()
_C.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
_C.SOLVER.MAX_ITER = 40000
_C.SOLVER.BASE_LR = 0.001
_C.SOLVER.BASE_LR_END = 0.0
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = False
_C.SOLVER.WEIGHT_DECAY = 0.0001
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.STEPS = (30000,)
_C.SOLVER.NUM_DECAYS = 3
_C.SOLVER.WARMUP_FACTOR = 1.0 / 1000
_C.SOLVER.WARMUP_ITERS = 1000
_C.SOLVER.WARMUP_METHOD = "linear"
_C.SOLVER.RESCALE_INTERVAL = False
_C.SOLVER.CHECKPOINT_PERIOD = 5000
_C.SOLVER.IMS_PER_BATCH = 16
_C.SOLVER.REFERENCE_WORLD_SIZE = 0
_C.SOLVER.BIAS_LR_FACTOR = 1.0
_C.SOLVER.WEIGHT_DECAY_BIAS = None  # None: follow WEIGHT_DECAY
_C.SOLVER.CLIP_GRADIENTS = CN({"ENABLED": False})
_C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
_C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
_C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
_C.SOLVER.AMP = CN({"ENABLED": False})
# ours: the autocast dtype of training with SOLVER.AMP.ENABLED: "float16" (detectron2's AMP, with a
# GradScaler; CUDA only), "bfloat16" (no scaler; CPU or CUDA) or "auto" (bfloat16 where the GPU
# supports it or this CPU runs it faster than float32, else float32; resnet_backbones.precision).
_C.SOLVER.AMP.DTYPE = "float16"

# ---------------------------------------------------------------------------- #
# Test
# ---------------------------------------------------------------------------- #
_C.TEST = CN()
_C.TEST.EXPECTED_RESULTS = []
_C.TEST.EVAL_PERIOD = 0
_C.TEST.KEYPOINT_OKS_SIGMAS = []
_C.TEST.DETECTIONS_PER_IMAGE = 100
_C.TEST.AUG = CN({"ENABLED": False})
_C.TEST.AUG.MIN_SIZES = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)
_C.TEST.AUG.MAX_SIZE = 4000
_C.TEST.AUG.FLIP = True
# ours: autocast for inference (DefaultPredictor, evaluation): "auto" (bfloat16 where this CPU runs
# it faster than float32 -- measured once per process -- or the GPU supports it; else float32),
# "bfloat16" (CPU or CUDA) or "float16" (CUDA only). Off by default: outputs then equal detectron2's
# fp32 outputs. Box decoding, NMS, RoIAlign and scores stay float32 (resnet_backbones.precision).
_C.TEST.AMP = CN({"ENABLED": False})
_C.TEST.AMP.DTYPE = "auto"
# ours: which parts the inference autocast covers: "roi_heads" (RoIAlign, res5 head, box predictor;
# the backbone and RPN stay float32, so proposals equal fp32 ones) or "all" (see
# resnet_backbones.precision).
_C.TEST.AMP.SCOPE = "roi_heads"
_C.TEST.PRECISE_BN = CN({"ENABLED": False})
_C.TEST.PRECISE_BN.NUM_ITER = 200

# ---------------------------------------------------------------------------- #
# Misc
# ---------------------------------------------------------------------------- #
_C.OUTPUT_DIR = "./output"
_C.SEED = -1  # negative: a different seed every run
_C.CUDNN_BENCHMARK = False
_C.FLOAT32_PRECISION = ""
_C.VIS_PERIOD = 0
