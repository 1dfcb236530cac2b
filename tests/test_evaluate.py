"""mAP on cases worked out by hand (numbers in the comments), and `stale evaluate` end to end."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from stale_cli.cli import app
from stale_cli.errors import DataError, InputError
from stale_cli.evaluation.evaluate import (ACTIVITYNET_TIOUS, THUMOS14_TIOUS, evaluate_files, parse_predictions,
                                          parse_tious)
from stale_cli.metric import evaluate_detection, interpolated_ap, segment_iou
from stale_cli.sidecar import write_features

from feature_files import error_lines, features  # tests/ is on sys.path (rootdir conftest)


def test_segment_iou():
    got = segment_iou(np.array([0.0, 10.0]), np.array([[0.0, 10.0], [5.0, 15.0], [10.0, 20.0], [2.0, 4.0]]))
    np.testing.assert_allclose(got, [1.0, 5 / 15, 0.0, 0.2])


def test_interpolated_ap_small_hand_example():
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1: envelope 1 on (0, 1/2], 2/3 on (1/2, 1] -> 1/2 + 1/3.
    assert interpolated_ap(np.array([1.0, 0.5, 2 / 3]), np.array([0.5, 0.5, 1.0])) == pytest.approx(5 / 6)
    # A late hit raises the envelope of everything before it: precision 0, 1/2 at recall 0, 1 -> 1/2.
    assert interpolated_ap(np.array([0.0, 0.5]), np.array([0.0, 1.0])) == pytest.approx(0.5)


def test_perfect_predictions_score_one():
    gt = {"v1": [("A", 0, 10), ("B", 20, 30)], "v2": [("A", 5, 7)]}
    preds = {"v1": [("A", 0, 10, 0.9), ("B", 20, 30, 0.8)], "v2": [("A", 5, 7, 0.7)]}
    r = evaluate_detection(gt, preds, ACTIVITYNET_TIOUS)
    assert r["mAP"] == pytest.approx([1.0] * 10)
    assert r["average_mAP"] == pytest.approx(1.0)
    assert r["per_class"] == {"A": [1.0] * 10, "B": [1.0] * 10}


def test_several_predictions_on_one_ground_truth():
    # The second prediction on v1's instance is a false positive: tp 1 0 1, fp 0 1 0 ->
    # recall 1/2 1/2 1, precision 1 1/2 2/3 -> AP 1/2 * 1 + 1/2 * 2/3 = 5/6.
    gt = {"v1": [("A", 0, 10)], "v2": [("A", 0, 10)]}
    preds = {"v1": [("A", 0, 10, 0.9), ("A", 1, 10, 0.8)], "v2": [("A", 0, 10, 0.7)]}
    r = evaluate_detection(gt, preds, [0.5])
    assert r["mAP"][0] == pytest.approx(5 / 6)


def test_prediction_takes_next_free_instance_above_threshold():
    # g1 [0,10] is taken by p1; p2 [1,10] has tIoU 0.9 with g1 but only 2/19 = 0.105 with g2 [8,20].
    # At 0.1 p2 falls to g2 (AP 1); at 0.5 it is a false positive: recall 1/2 1/2, precision 1 1/2 -> AP 1/2.
    gt = {"v1": [("A", 0, 10), ("A", 8, 20)]}
    preds = {"v1": [("A", 0, 10, 0.9), ("A", 1, 10, 0.8)]}
    r = evaluate_detection(gt, preds, [0.1, 0.5])
    assert r["mAP"] == pytest.approx([1.0, 0.5])


def test_ties_follow_the_official_order():
    # Equal scores: the official ranking np.argsort(scores)[::-1] puts the later prediction of the file first
    # (for short lists). Here that is the false positive: precision 0, 1/2 at recall 0, 1 -> AP 1/2 (not 1).
    gt = {"v1": [("A", 0, 10)]}
    preds = {"v1": [("A", 0, 10, 0.5)], "v3": [("A", 0, 10, 0.5)]}
    assert evaluate_detection(gt, preds, [0.5])["mAP"][0] == pytest.approx(0.5)
    # Swapping the file order puts the hit first: AP 1.
    preds = {"v3": [("A", 0, 10, 0.5)], "v1": [("A", 0, 10, 0.5)]}
    assert evaluate_detection(gt, preds, [0.5])["mAP"][0] == pytest.approx(1.0)


def test_predictions_for_videos_without_ground_truth_are_false_positives():
    # "vX" is not in the ground truth at all, v2 has ground truth of B only: both false positives for A,
    # ranked above the hit: precision 0 0 1/3 at recall 0 0 1 -> AP 1/3.
    gt = {"v1": [("A", 0, 10)], "v2": [("B", 0, 10)]}
    preds = {"vX": [("A", 0, 10, 0.9)], "v2": [("A", 0, 10, 0.8), ("B", 0, 10, 0.1)], "v1": [("A", 0, 10, 0.7)]}
    r = evaluate_detection(gt, preds, [0.5])
    assert r["per_class"]["A"][0] == pytest.approx(1 / 3)
    assert r["per_class"]["B"][0] == pytest.approx(1.0)


def test_class_without_predictions_gets_zero():
    gt = {"v1": [("A", 0, 10), ("B", 20, 30)]}
    r = evaluate_detection(gt, {"v1": [("A", 0, 10, 0.9)]}, THUMOS14_TIOUS)
    assert r["per_class"]["B"] == [0.0] * 5
    assert r["mAP"] == pytest.approx([0.5] * 5)
    assert r["tiou"] == [0.3, 0.4, 0.5, 0.6, 0.7]


def test_labels_unknown_to_the_ground_truth_are_left_out(caplog):
    gt = {"v1": [("HighJump", 0, 10)]}
    r = evaluate_detection(gt, {"v1": [("Skateboarding", 0, 10, 0.9)]}, [0.5])
    assert r["per_class"] == {"HighJump": [0.0]} and "'Skateboarding'" in caplog.text
    # With the evaluated classes given, other labels cannot change their AP: ignored.
    r = evaluate_detection(gt, {"v1": [("Skateboarding", 0, 10, 0.9), ("HighJump", 0, 10, 0.5)]}, [0.5], ["HighJump"])
    assert r["per_class"]["HighJump"] == [1.0]
    # A different spelling of a known class is that class.
    r = evaluate_detection(gt, {"v1": [("high jump", 0, 10, 0.9)]}, [0.5])
    assert r["per_class"]["HighJump"] == [1.0]


def test_ambiguous_is_not_a_class_and_restriction_to_classes():
    gt = {"v1": [("A", 0, 10), ("Ambiguous", 12, 14), ("B", 20, 30)]}
    preds = {"v1": [("A", 0, 10, 0.9), ("B", 0, 5, 0.9)]}
    r = evaluate_detection(gt, preds, [0.5])
    assert set(r["per_class"]) == {"A", "B"}
    r = evaluate_detection(gt, preds, [0.5], classes=["A"])
    assert r["per_class"] == {"A": [1.0]} and r["average_mAP"] == 1.0
    with pytest.raises(DataError, match="without any ground truth"):
        evaluate_detection(gt, preds, [0.5], classes=["C"])


def test_prediction_schema_errors():
    with pytest.raises(DataError, match="no 'results'"):
        parse_predictions({"database": {}})
    with pytest.raises(DataError, match="must have 'label', 'score' and 'segment'"):
        parse_predictions({"results": {"v": [{"label": "A", "segment": [0, 1]}]}})
    with pytest.raises(DataError, match="ends before it starts"):
        parse_predictions({"results": {"v": [{"label": "A", "score": 1, "segment": [3, 1]}]}})
    ok = parse_predictions({"results": {"v": [{"label": "A", "score": "0.5", "segment": ["1.5", 2]}]}})
    assert ok == {"v": [("A", 1.5, 2.0, 0.5)]}


def test_parse_tious():
    assert parse_tious("0.3,0.5,0.7") == [0.3, 0.5, 0.7]
    assert parse_tious("0.5:0.95:0.05") == pytest.approx(ACTIVITYNET_TIOUS)
    with pytest.raises(InputError):
        parse_tious("0.5,2")


# ------------------------------------------------------------------------------------------ files and the CLI

UNSEEN_0 = ["BaseballPitch", "HammerThrow", "PoleVault", "SoccerPenalty", "ThrowDiscus"]  # thumos14/75_25/0 test


@pytest.fixture
def files(tmp_path):
    db = {}
    for i, c in enumerate(UNSEEN_0 + ["HighJump"]):
        db[f"video_test_{i}"] = {
            "subset": "test",
            "duration": 100.0,
            "annotations": [{"segment": ["10.0", "20.0"], "label": c}, {"segment": [50, 52], "label": "Ambiguous"}],
        }
    db["video_validation_0"] = {"subset": "val", "duration": 50.0, "annotations": [{"segment": [1, 2], "label": "HighJump"}]}
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"database": db}))
    results = {
        f"video_test_{i}": [{"label": c, "score": 0.9, "segment": [10.0, 20.0]}] for i, c in enumerate(UNSEEN_0)
    }
    results["video_test_0"].append({"label": "HighJump", "score": 0.8, "segment": [0, 5]})  # seen class: ignored
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({"version": "x", "results": results, "external_data": {}}))
    return ann, pred


def test_evaluate_files_split_and_defaults(files):
    ann, pred = files
    r = evaluate_files(pred, ann, split="thumos14/75_25/0")
    assert r["subset"] == "test" and r["tiou"] == list(THUMOS14_TIOUS)
    assert sorted(r["per_class"]) == sorted(UNSEEN_0)
    assert r["average_mAP"] == pytest.approx(1.0)
    r = evaluate_files(pred, ann)  # all classes: HighJump's only prediction misses
    assert r["per_class"]["HighJump"] == [0.0] * 5
    assert r["average_mAP"] == pytest.approx(5 / 6)


def test_cli_evaluate_end_to_end(files, tmp_path):
    ann, pred = files
    out = tmp_path / "res" / "eval.json"
    res = CliRunner().invoke(
        app, ["evaluate", str(pred), "--annotations", str(ann), "--split", "thumos14/75_25/0", "--output", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "PoleVault" in res.output and "average mAP: 100.00" in res.output
    saved = json.loads(out.read_text())
    assert set(saved) >= {"tiou", "mAP", "average_mAP", "per_class"}
    assert all(0.0 <= m <= 1.0 for m in saved["mAP"])

    res = CliRunner().invoke(app, ["evaluate", str(pred), "-a", str(ann), "--tiou", "0.5", "--subset", "test"])
    assert res.exit_code == 0, res.output
    assert "@0.5" in res.output


def test_cli_evaluate_bad_inputs(files, tmp_path):
    ann, pred = files
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"database": {}}))
    res = CliRunner().invoke(app, ["evaluate", str(bad), "--annotations", str(ann)])
    assert res.exit_code == 1
    assert "error:" in res.output and "not a prediction file" in res.output and "Traceback" not in res.output

    res = CliRunner().invoke(app, ["evaluate", str(pred), "--annotations", str(ann), "--split", "thumos14/60_40/0"])
    assert res.exit_code == 1 and "unknown split" in res.output

    res = CliRunner().invoke(app, ["evaluate", str(pred), "--annotations", str(ann), "--subset", "training"])
    assert res.exit_code == 1 and "subset" in res.output

    notjson = tmp_path / "x.json"
    notjson.write_text("{")
    res = CliRunner().invoke(app, ["evaluate", str(notjson), "--annotations", str(ann)])
    assert res.exit_code == 1 and "not valid JSON" in res.output


def test_evaluate_leaves_out_labels_without_ground_truth_with_one_warning(tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"database": {
        "v1": {"subset": "test", "duration": 30, "annotations": [{"segment": [1, 5], "label": "HighJump"}]},
        "v2": {"subset": "test", "duration": 30, "annotations": [{"segment": [2, 6], "label": "Diving"}]},
    }}))
    preds = tmp_path / "p.json"  # detect was run with a wider class list than this subset holds
    preds.write_text(json.dumps({"results": {
        "v1": [{"label": "high jump", "score": 0.9, "segment": [1, 5]},
               {"label": "pole vault", "score": 0.95, "segment": [1, 5]},
               {"label": "pole vault", "score": 0.5, "segment": [10, 15]}],
        "v2": [{"label": "Diving", "score": 0.8, "segment": [2, 6]},
               {"label": "Shotput", "score": 0.7, "segment": [2, 6]}],
    }}))
    r = CliRunner().invoke(app, ["evaluate", str(preds), "-a", str(ann), "--tiou", "0.5", "-o",
                                 str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    log = " ".join(r.stderr.split())  # the log handler wraps long lines
    assert log.count("without ground truth") == 1 and "left out 3 prediction(s) of 2 label(s)" in log, r.stderr
    assert "'Shotput', 'pole vault'" in log
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["per_class"] == {"Diving": [1.0], "HighJump": [1.0]} and result["average_mAP"] == 1.0


# ---------------------------------------------------------------- impossible annotations; a UTF-8 BOM


def test_a_segment_before_the_video_starts_is_refused(run, tmp_path):
    import json

    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"database": {"v": {"subset": "test", "duration": 10, "annotations": [
        {"segment": [1, 2], "label": "A"}, {"segment": [-5, -2], "label": "A"}]}}}))
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps({"results": {"v": [{"label": "A", "score": 0.9, "segment": [1, 2]}]}}))
    r = run("evaluate", preds, "-a", ann, clip=False)
    assert r.exit_code == 1 and len(error_lines(r)) == 1, r.output
    assert "annotation 1: segment [-5.0, -2.0] ends before the video starts" in error_lines(r)[0]


def test_a_bom_in_a_prediction_csv_classes_file_and_annotations_is_dropped(run, tmp_path):
    import json

    ann = tmp_path / "ann.json"
    ann.write_bytes(b"\xef\xbb\xbf" + json.dumps({"database": {"v": {"subset": "test", "duration": 10,
                                                  "annotations": [{"segment": [1, 2], "label": "A"}]}}}).encode())
    preds = tmp_path / "p.csv"
    preds.write_bytes(b"\xef\xbb\xbfvideo,label,start,end,score\r\nv,A,1,2,0.9\r\n")
    r = run("evaluate", preds, "-a", ann, "--tiou", "0.5", clip=False)
    assert r.exit_code == 0, r.output
    assert "100.00" in r.stdout
    classes = tmp_path / "classes.txt"
    classes.write_bytes(b"\xef\xbb\xbfhigh jump\r\npole vault\r\n")
    write_features(tmp_path / "v.npy", *features())
    r = run("detect", tmp_path / "v.npy", "--classes-file", classes, "-o", tmp_path / "out.json", "--no-progress")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "out.json").read_text())["external_data"]["classes"] == ["high jump", "pole vault"]
