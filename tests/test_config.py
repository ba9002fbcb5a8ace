"""The config: detectron2's keys and defaults, _BASE_ inheritance, overrides and clear errors."""

from pathlib import Path

import pytest

from resnet_backbones.config import CfgNode, ConfigError, get_cfg

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_are_detectron2s_for_a_c4_model():
    cfg = get_cfg()
    assert isinstance(cfg, CfgNode)
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert cfg.MODEL.PIXEL_MEAN == [103.530, 116.280, 123.675]
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is True
    assert cfg.MODEL.RESNETS.NORM == "FrozenBN"
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 2
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[32, 64, 128, 256, 512]]
    assert cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN == 12000 and cfg.MODEL.RPN.POST_NMS_TOPK_TEST == 1000
    assert cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE == 512
    assert cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS == (10.0, 10.0, 5.0, 5.0)
    assert cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE == "ROIAlignV2"
    assert cfg.SOLVER.WARMUP_FACTOR == pytest.approx(0.001)
    m = cfg.MODEL.ROI_MASK_HEAD  # Mask R-CNN's head: detectron2's defaults
    assert (m.NAME, m.NUM_CONV, m.CONV_DIM, m.NORM) == ("MaskRCNNConvUpsampleHead", 0, 256, "")
    assert (m.POOLER_RESOLUTION, m.POOLER_TYPE, m.CLS_AGNOSTIC_MASK) == (14, "ROIAlignV2", False)
    assert cfg.INPUT.MASK_FORMAT == "polygon" and cfg.MODEL.MASK_ON is False
    for group in ("MODEL", "INPUT", "DATASETS", "DATALOADER", "SOLVER", "TEST"):
        assert group in cfg
    for key in ("OUTPUT_DIR", "SEED", "VERSION"):
        assert key in cfg
    # our own options live under clearly named keys
    assert cfg.MODEL.RESNETS.SHORTCUT == "B"
    assert cfg.MODEL.RESNETS.PREACT is False
    assert cfg.MODEL.RESNETS.CHANNELS_LAST is False


def test_get_cfg_returns_an_independent_copy():
    a = get_cfg()
    a.SOLVER.BASE_LR = 123.0
    assert get_cfg().SOLVER.BASE_LR == 0.001


def test_defaults_equal_detectron2_for_every_shared_key():
    d2config = pytest.importorskip("detectron2.config")
    ours, theirs = get_cfg(), d2config.get_cfg()
    shared = [k for k in ours.all_keys() if _has(theirs, k)]
    assert len(shared) > 120
    for key in shared:
        assert _get(ours, key) == _get(theirs, key), key


def _has(cfg, key):
    node = cfg
    for part in key.split("."):
        if part not in node:
            return False
        node = node[part]
    return True


def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def test_base_inheritance_and_overrides(tmp_path):
    write(
        tmp_path / "base.yaml",
        "SOLVER:\n  BASE_LR: 0.02\n  MAX_ITER: 100\nMODEL:\n  RESNETS:\n    DEPTH: 101\n",
    )
    sub = tmp_path / "sub"
    sub.mkdir()
    child = write(
        sub / "child.yaml", "_BASE_: ../base.yaml\nSOLVER:\n  MAX_ITER: 7\n  STEPS: (3, 5)\n"
    )
    cfg = get_cfg()
    cfg.merge_from_file(str(child))
    assert cfg.SOLVER.BASE_LR == 0.02  # from the base
    assert cfg.SOLVER.MAX_ITER == 7  # the child wins
    assert cfg.SOLVER.STEPS == (3, 5)
    assert cfg.MODEL.RESNETS.DEPTH == 101
    cfg.merge_from_list(
        ["MODEL.RESNETS.DEPTH", "50", "DATASETS.TRAIN", "('a', 'b')", "SOLVER.BASE_LR", "1"]
    )
    assert cfg.MODEL.RESNETS.DEPTH == 50
    assert cfg.DATASETS.TRAIN == ("a", "b")
    assert cfg.SOLVER.BASE_LR == 1.0 and isinstance(cfg.SOLVER.BASE_LR, float)


def test_unknown_key_names_the_file_it_came_from_and_the_closest_key(tmp_path):
    write(tmp_path / "base.yaml", "MODEL:\n  RESNET:\n    DEPTH: 101\n")
    child = write(tmp_path / "child.yaml", "_BASE_: base.yaml\nSOLVER:\n  BASE_LR: 0.1\n")
    with pytest.raises(ConfigError) as err:
        get_cfg().merge_from_file(str(child))
    msg = str(err.value)
    assert "base.yaml" in msg and "child.yaml" not in msg
    assert "MODEL.RESNET.DEPTH" in msg
    assert "did you mean 'MODEL.RESNETS.DEPTH'" in msg


def test_misspelled_leaf_suggests_the_closest_key(tmp_path):
    cfg_file = write(tmp_path / "c.yaml", "SOLVER:\n  BASELR: 0.1\n")
    with pytest.raises(
        ConfigError, match=r"c\.yaml.*SOLVER\.BASELR.*did you mean 'SOLVER\.BASE_LR'"
    ):
        get_cfg().merge_from_file(str(cfg_file))


def test_wrong_type_names_key_file_and_expected_type(tmp_path):
    cfg_file = write(tmp_path / "c.yaml", "MODEL:\n  RESNETS:\n    DEPTH: fifty\n")
    with pytest.raises(ConfigError) as err:
        get_cfg().merge_from_file(str(cfg_file))
    msg = str(err.value)
    expected = "config key 'MODEL.RESNETS.DEPTH' expects int (default 50), got str 'fifty'"
    assert msg == f"{cfg_file}: {expected}"


def test_group_given_a_scalar_is_refused(tmp_path):
    cfg_file = write(tmp_path / "c.yaml", "SOLVER: 3\n")
    with pytest.raises(ConfigError, match="SOLVER.*group of keys"):
        get_cfg().merge_from_file(str(cfg_file))


def test_command_line_errors():
    cfg = get_cfg()
    with pytest.raises(
        ConfigError, match="command line.*MODEL.RESNETS.DEPHT.*did you mean 'MODEL.RESNETS.DEPTH'"
    ):
        cfg.merge_from_list(["MODEL.RESNETS.DEPHT", "50"])
    with pytest.raises(ConfigError, match="command line.*SOLVER.MAX_ITER.*int"):
        cfg.merge_from_list(["SOLVER.MAX_ITER", "many"])
    with pytest.raises(ConfigError, match="odd number"):
        cfg.merge_from_list(["SOLVER.MAX_ITER"])
    with pytest.raises(ConfigError, match="group of keys"):
        cfg.merge_from_list(["SOLVER", "1"])


def test_missing_base_and_bad_yaml_are_named(tmp_path):
    child = write(tmp_path / "child.yaml", "_BASE_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere\.yaml.*does not exist"):
        get_cfg().merge_from_file(str(child))
    bad = write(tmp_path / "bad.yaml", "SOLVER: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*not valid YAML"):
        get_cfg().merge_from_file(str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        get_cfg().merge_from_file(str(tmp_path / "absent.yaml"))


def test_base_cycle_is_reported(tmp_path):
    write(tmp_path / "a.yaml", "_BASE_: b.yaml\n")
    write(tmp_path / "b.yaml", "_BASE_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        get_cfg().merge_from_file(str(tmp_path / "a.yaml"))


def test_yaml_is_loaded_safely(tmp_path):
    marker = tmp_path / "pwned"
    evil = write(
        tmp_path / "evil.yaml",
        f"OUTPUT_DIR: !!python/object/apply:os.system ['touch {marker}']\n",
    )
    with pytest.raises(
        ConfigError,
        match=r"evil\.yaml: not valid YAML: could not determine a "
        r"constructor for the tag .*python/object/apply:os\.system",
    ):
        get_cfg().merge_from_file(str(evil))
    assert not marker.exists()


def test_dump_and_reload_round_trip(tmp_path):
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.STEPS", "(10, 20)", "MODEL.RESNETS.DEPTH", "101"])
    path = write(tmp_path / "dumped.yaml", cfg.dump())
    again = get_cfg()
    again.merge_from_file(str(path))
    assert again == cfg
