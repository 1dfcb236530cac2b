"""One option vocabulary (stale_cli/cli/): what every command that writes a file calls its output, ``-o -`` for
stdout, how classes are given, how -h shows types and defaults, numeric options bounded."""

import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from stale_cli.cli import app

from feature_files import detect_known, error_lines, invoke  # tests/ is on sys.path (rootdir conftest)

ANNOTATIONS = Path(__file__).parent / "fixtures" / "thumos14_mini.json"

COMMANDS = ["extract-features", "train", "detect", "evaluate", "zero-shot", "models"]
WRITES_A_FILE = ["extract-features", "train", "detect", "evaluate"]
TAKES_CLASSES = ["train", "detect", "evaluate"]


def help_of(command: str) -> str:
    r = CliRunner().invoke(app, [command, "-h"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    return r.stdout


def options_of(command: str) -> dict:
    """{option name: the click parameter} of one command."""
    cmd = typer.main.get_command(app).commands[command]
    return {name: p for p in cmd.params for name in (*p.opts, *p.secondary_opts)}


@pytest.mark.parametrize("command", WRITES_A_FILE)
def test_output_is_output_o_and_the_old_out_still_parses(command):
    opts = options_of(command)
    assert opts["--output"] is opts["-o"] is opts["--out"]  # one option under three names
    text = help_of(command)
    assert "--output" in text and re.search(r"--out\b(?!put)", text) is None  # the old name is not shown


@pytest.mark.parametrize("command", TAKES_CLASSES)
def test_classes_and_classes_file_wherever_classes_are_taken(command):
    opts = options_of(command)
    assert opts["--classes"] is opts["-c"] and "--classes-file" in opts
    assert opts["--classes"].metavar == '"A,B"' and opts["--classes-file"].metavar == "FILE"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_readable_types_and_defaults_one_way(command):
    text = help_of(command)
    for label in ("<bool>", "<str>", "<int>", "<float>", "<path>", "list["):
        assert label not in text, (command, label)
    # every default in brackets, none in words inside the help text
    assert re.search(r"\(default|default:(?<!\[default:)", text, re.IGNORECASE) is None, text
    assert "[default: (" not in text  # a default described in words is not put in parentheses


def test_defaults_in_words_and_counted_values():
    text = help_of("detect")
    assert "[default: the checkpoint's rate, else 4]" in text
    text = help_of("extract-features")
    assert "[default: half the CPUs, at most 8]" in text  # not the count of this machine's CPUs
    flags = [ln for ln in help_of("train").splitlines() if "--balance-classes" in ln or "--fresh" in ln]
    assert flags and all("INTEGER" not in ln and "TEXT" not in ln for ln in flags)


def test_missing_output_names_the_new_option_only(tmp_path):
    r = CliRunner().invoke(app, ["extract-features", str(tmp_path)])
    assert r.exit_code == 2
    assert r.stderr.startswith("error: missing option '--output' / '-o' (see ")


def test_out_alias_and_output_write_the_same_file(tmp_path):
    """`--out` (the old name) still works end to end, on a command where it used to exist."""
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"database": {"v": {"subset": "test", "duration": 10.0, "annotations": [
        {"segment": [1, 2], "label": "Jump"}]}}}))
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({"version": "x", "results": {"v": [{"label": "Jump", "score": 0.9,
                                                                   "segment": [1, 2]}]}, "external_data": {}}))
    for flag in ("--output", "-o", "--out"):
        out = tmp_path / f"eval{flag}.json"
        r = CliRunner().invoke(app, ["evaluate", str(pred), "-a", str(ann), flag, str(out)])
        assert r.exit_code == 0, r.output
        assert json.loads(out.read_text())["average_mAP"] == pytest.approx(1.0)


def test_evaluate_takes_classes_inline_or_from_a_file(tmp_path):
    db = {f"v{i}": {"subset": "test", "duration": 10.0, "annotations": [{"segment": [1, 2], "label": c}]}
          for i, c in enumerate(["Jump", "Run"])}
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"database": db}))
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({"version": "x", "results": {"v0": [{"label": "Jump", "score": 0.9, "segment": [1, 2]}]},
                                "external_data": {}}))
    names = tmp_path / "names.txt"
    names.write_text("Jump\n")
    for extra in (["--classes", "Jump"], ["--classes-file", str(names)]):
        r = CliRunner().invoke(app, ["evaluate", str(pred), "-a", str(ann), *extra, "-o", "-"])
        assert r.exit_code == 0, r.output
        assert list(json.loads(r.stdout)["per_class"]) == ["Jump"]  # Run (no prediction, AP 0) is not asked
    r = CliRunner().invoke(app, ["evaluate", str(pred), "-a", str(ann), "-c", "Jump", "--classes-file", str(names)])
    assert r.exit_code == 1 and "not both" in r.stderr
    r = CliRunner().invoke(app, ["evaluate", str(pred), "-a", str(ann), "-c", "Jump", "--split", "thumos14/75_25/0"])
    assert r.exit_code == 1 and "not both" in r.stderr


def test_train_refuses_classes_and_classes_file_together(tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"database": {"v": {"subset": "training", "duration": 10.0, "annotations": [
        {"segment": [1, 2], "label": "Jump"}]}}}))
    names = tmp_path / "names.txt"
    names.write_text("Jump\n")
    r = CliRunner().invoke(app, ["train", "--features", str(tmp_path), "--annotations", str(ann), "-o",
                                 str(tmp_path / "m.pt"), "-c", "Jump", "--classes-file", str(names)])
    assert r.exit_code == 1 and r.stderr.startswith("error:") and "not both" in r.stderr, r.output


@pytest.mark.parametrize("shell, line", [("bash", "complete -o default -F _stale_completion stale"),
                                         ("zsh", "#compdef stale"), ("fish", "complete --command stale")])
def test_completion_script_is_generated(monkeypatch, shell, line):
    """`stale --show-completion` prints the script `--install-completion` installs; here the shell is named,
    as Typer lets a test do, instead of detected from the parent process."""
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    r = CliRunner().invoke(app, ["--show-completion", shell], prog_name="stale")
    assert r.exit_code == 0, r.output
    assert line in r.stdout and "_STALE_COMPLETE" in r.stdout


def test_completion_offers_commands_and_current_option_names():
    def complete(words: str) -> list:
        env = {"_STALE_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)}
        r = CliRunner().invoke(app, [], prog_name="stale", env=env)
        assert r.exit_code == 0, r.output
        return r.stdout.split()

    assert complete("stale ev") == ["evaluate"]
    assert complete("stale extract-features --o") == ["--output", "--overwrite"]  # not the old --out
    assert "--classes-file" in complete("stale train --cl")


# ---------------------------------------------------------------- bounded numeric options of train, zero-shot, evaluate


def test_training_and_evaluation_options_are_bounded(tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"database": {"v": {"subset": "test", "duration": 10,
                                                  "annotations": [{"segment": [1, 2], "label": "A"}]}}}))
    for args in (["--lr", "inf"], ["--lr", "nan"], ["--lr", "0"], ["--seed", "-1"], ["--epochs", "0"],
                 ["--val-fraction", "nan"], ["--lr-prompt", "2"], ["--lr-text", "nan"], ["--window-jitter", "1.5"],
                 ["--dropout", "1"], ["--dropout", "nan"]):
        r = CliRunner().invoke(app, ["train", "--features", str(tmp_path), "--annotations", str(ann), "--out",
                                     str(tmp_path / "m.pt"), *args])
        assert r.exit_code == 1 and len(error_lines(r)) == 1 and args[0] in r.stderr, (args, r.output)
    r = CliRunner().invoke(app, ["zero-shot", "--dataset", "thumos14", "--features", str(tmp_path), "-a", str(ann),
                                 "--work-dir", str(tmp_path / "w"), "--num-snippets", "1"])
    assert r.exit_code == 1 and "--num-snippets" in r.stderr
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps({"results": {"v": [{"label": "A", "score": 0.9, "segment": [1, 2]}]}}))
    for tiou, why in (("0.5:inf:0.05", "start:stop:step"), ("0.5:0.95:0.000005", "90001 thresholds"),
                      ("0.5:0.95:1e-320", "thresholds"), ("nan", "(0, 1]")):
        r = CliRunner().invoke(app, ["evaluate", str(preds), "-a", str(ann), "--tiou", tiou])
        assert r.exit_code == 1 and len(error_lines(r)) == 1 and why in r.stderr, (tiou, r.output)
    deep = tmp_path / "deep.json"
    deep.write_text('{"database": ' + "[" * 100_000 + "]" * 100_000 + "}")
    for args in ([str(preds), "-a", str(deep)], [str(deep), "-a", str(ann)]):
        r = CliRunner().invoke(app, ["evaluate", *args])
        assert r.exit_code == 1 and "nested too deeply" in r.stderr and "Traceback" not in r.output


def test_train_and_zero_shot_share_one_bound_per_training_option(tmp_path):
    """One check of the options `train` and `zero-shot` share: the same value gets the same answer from both."""
    (tmp_path / "a.json").write_text('{"database": {}}')
    train = ["train", "--features", tmp_path, "--annotations", tmp_path / "a.json", "--out", tmp_path / "m.pt"]
    zero_shot = ["zero-shot", "--dataset", "thumos14", "--features", tmp_path, "--annotations", tmp_path / "a.json",
                 "--work-dir", tmp_path / "w"]
    for option, value, message in (("--lr", "1", "--lr must be in (0, 1), got 1.0"),
                                   ("--epochs", "0", "--epochs must be a number in [1, "),
                                   ("--batch-size", "0", "--batch-size must be a number in [1, ")):
        for command in (train, zero_shot):
            r = invoke(*command, option, value)
            assert r.exit_code == 1 and f"error: {message}" in r.output, (command[0], r.output)


# ---------------------------------------------------------------- -o - is stdout


def test_dash_means_stdout(feats, tmp_path, monkeypatch, tiny_clip_name, tiny_clip_weights):
    monkeypatch.chdir(tmp_path)
    r = detect_known([feats / "v0.npy", feats / "v1.npy", "-o", "-"], tiny_clip_name, tiny_clip_weights)
    assert r.exit_code == 0, r.output
    assert sorted(json.loads(r.stdout)["results"]) == ["v0", "v1"]  # stdout holds exactly the JSON
    assert not Path("-").exists()
    r = detect_known([feats / "v0.npy", "-o", "-", "--format", "csv"], tiny_clip_name, tiny_clip_weights)
    assert r.stdout.startswith("video,label,start,end,score\n")

    preds = tmp_path / "p.json"
    preds.write_text(json.dumps({"results": {"video_test_0000004": []}}))
    r = CliRunner().invoke(app, ["evaluate", str(preds), "-a", str(ANNOTATIONS), "-o", "-"])
    assert r.exit_code == 0, r.output
    assert "average_mAP" in json.loads(r.stdout) and not Path("-").exists()


def test_extract_refuses_dash_as_out(tmp_path, videos):
    r = CliRunner().invoke(app, ["extract-features", str(videos["single"]["path"]), "--out", "-"])
    assert r.exit_code == 1 and "give a directory" in r.output and not Path("-").exists()
