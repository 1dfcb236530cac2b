"""The dataset records (stale_cli.model.datasets): one name per dataset, its old spelling accepted, and every user of a
dataset's facts reading them from its record."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from stale_cli.cli import app
from stale_cli.errors import InputError
from stale_cli.evaluation.evaluate import default_subset, default_tious
from stale_cli.evaluation.protocol import ProtocolConfig
from stale_cli.model import datasets
from stale_cli.model.data.annotations import Annotations, VideoAnnotation
from stale_cli.model.data.splits import list_splits, load_split
from stale_cli.model.data.windows import DataConfig
from stale_cli.model.train import default_training_subset


def test_one_record_per_name_and_the_old_spelling():
    assert list(datasets.DATASETS) == ["thumos14", "activitynet13"]
    assert datasets.get("activitynet") is datasets.get("activitynet13") is datasets.ACTIVITYNET
    with pytest.raises(InputError, match=r"--preset must be one of thumos14, activitynet13, not 'kinetics'"):
        datasets.get("kinetics", "--preset")


def test_the_records_hold_the_paper_settings():
    t, a = datasets.THUMOS14, datasets.ACTIVITYNET
    assert (t.data.mode, t.data.num_snippets, a.data.mode, a.data.num_snippets) == ("window", 256, "resize", 100)
    assert (t.detect.top_k, a.detect.top_k, a.detect.nms_sigma) == (200, 100, 0.75)
    assert t.tious == (0.3, 0.4, 0.5, 0.6, 0.7) and len(a.tious) == 10 and a.tious[0] == 0.5
    # The paper's average of each setting is there with the thresholds it reports.
    assert t.paper["75_25"][-1] == 23.8 and a.paper["50_50"][0.5] == 32.1


def test_guesses_for_files_that_name_no_dataset():
    assert datasets.for_data_config(DataConfig(mode="resize")) is datasets.ACTIVITYNET
    assert datasets.for_data_config(DataConfig()) is datasets.THUMOS14
    assert default_tious(None, "test") == datasets.THUMOS14.tious
    assert default_tious(None, "validation") == default_tious(None, "other") == datasets.ACTIVITYNET.tious
    assert default_tious("activitynet", "test") == datasets.ACTIVITYNET.tious


def _annotations(*subsets: str) -> Annotations:
    videos = {f"v{i}": VideoAnnotation(f"v{i}", s, 10.0, ()) for i, s in enumerate(subsets)}
    return Annotations(videos=videos, classes=(), source="a.json")


def test_default_subsets_come_from_the_records():
    assert default_subset(_annotations("val", "test")) == "test"
    assert default_subset(_annotations("training", "validation", "testing")) == "validation"
    with pytest.raises(InputError, match="no 'test' or 'validation' subset"):
        default_subset(_annotations("a", "b"))
    assert default_training_subset(_annotations("val", "test")) == "val"
    assert default_training_subset(_annotations("training", "validation")) == "training"


def test_split_and_protocol_names_accept_the_old_spelling():
    assert load_split("activitynet/75_25/1") == load_split("activitynet13/75_25/1")
    assert all(not s.startswith("activitynet/") for s in list_splits())
    cfg = ProtocolConfig("activitynet", "75_25")
    assert cfg.dataset == "activitynet13" and cfg.spec is datasets.ACTIVITYNET


def test_train_cli_refuses_an_unknown_preset(tmp_path):
    (tmp_path / "a.json").write_text('{"database": {}}')
    res = CliRunner().invoke(app, ["train", "--features", str(tmp_path), "--annotations", str(tmp_path / "a.json"),
                                   "--out", str(tmp_path / "m.pt"), "--preset", "kinetics"])
    assert res.exit_code == 1, res.output
    assert "error: --preset must be one of thumos14, activitynet13, not 'kinetics'" in res.output
    assert "Traceback" not in res.output
