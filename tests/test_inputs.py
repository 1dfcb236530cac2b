"""Which files a command works on (stale_cli/inputs.py): files, recursive directories (links followed once, broken
ones reported), @lists (a bad line costs that line); shards partition the inputs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stale_cli.cli import app
from stale_cli.errors import InputError
from stale_cli.inputs import collect_inputs, parse_shard, select_shard

from feature_files import detect_args  # tests/ is on sys.path (rootdir conftest)


def touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")
    return p


def test_collect_files_dirs_and_lists(tmp_path):
    a = touch(tmp_path / "d" / "a.mp4")
    b = touch(tmp_path / "d" / "sub" / "b.MKV")
    touch(tmp_path / "d" / "notes.txt")
    touch(tmp_path / "d" / ".hidden.mp4")
    touch(tmp_path / "c.avi")
    odd = touch(tmp_path / "odd.bin")  # named explicitly: taken whatever its extension
    lst = tmp_path / "lists" / "list.txt"
    lst.parent.mkdir()
    lst.write_text(f"# my videos\n\n../c.avi\n{a}\n")
    got = collect_inputs([str(tmp_path / "d"), f"@{lst}", str(odd)])
    assert got == [a, b, tmp_path / "lists" / ".." / "c.avi", odd]  # a listed twice, kept once
    feats = touch(tmp_path / "f" / "x.npy")
    assert collect_inputs([str(tmp_path / "f")], kinds=("features",)) == [feats]


def test_collect_errors(tmp_path):
    with pytest.raises(InputError, match="no such file or directory"):
        collect_inputs([str(tmp_path / "missing.mp4")])
    (tmp_path / "empty").mkdir()
    touch(tmp_path / "empty" / "readme.txt")
    with pytest.raises(InputError, match="contains no video files"):
        collect_inputs([str(tmp_path / "empty")])
    with pytest.raises(InputError, match="list file"):
        collect_inputs([f"@{tmp_path / 'nolist.txt'}"])
    loop = tmp_path / "loop.txt"
    loop.write_text(f"@{loop}\n")
    with pytest.raises(InputError, match="the list includes itself"):
        collect_inputs([f"@{loop}"])


def test_parse_shard(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert parse_shard("2/5") == (2, 5)
    assert parse_shard(" 0/1 ") == (0, 1)
    assert parse_shard(None) is None
    for bad in ("5/5", "-1/3", "1/0", "a/b", "3", "1/2/3"):
        with pytest.raises(InputError, match="--shard"):
            parse_shard(bad)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert parse_shard(None) == (3, 4)  # torchrun
    assert parse_shard("1/2") == (1, 2)  # an explicit --shard wins


def test_shards_partition_the_inputs():
    paths = [Path(f"/data/v{i:04d}.mp4") for i in range(500)]
    for n in (1, 3, 8):
        shards = [select_shard(paths, i, n) for i in range(n)]
        flat = [p for s in shards for p in s]
        assert sorted(flat) == sorted(paths)  # every input in exactly one shard
        assert len(flat) == len(set(flat))
        assert min(len(s) for s in shards) > 0.6 * len(paths) / n  # roughly balanced
        # deterministic and independent of input order and of the other inputs
        assert select_shard(list(reversed(paths)), 1 % n, n) == list(reversed(shards[1 % n]))
        assert select_shard(paths[:10], 0, n) == [p for p in shards[0] if p in paths[:10]]


# ---------------------------------------------------------------- an @list with a bad line, linked folders


def test_list_with_a_bad_line_runs_the_rest(tmp_path, videos, tiny_clip_name, tiny_clip_weights):
    listed = tmp_path / "list.txt"
    listed.write_text(f"{videos['single']['path']}\n{tmp_path / 'gone.mp4'}\n{videos['cfr25']['path']}\n")
    bad: list = []
    assert collect_inputs([f"@{listed}"], bad=bad) == [videos["single"]["path"], videos["cfr25"]["path"]]
    assert len(bad) == 1 and "gone.mp4" in bad[0][1]
    r = CliRunner().invoke(app, ["extract-features", f"@{listed}", "--out", str(tmp_path / "f"), "--fps", "1",
                                 "--clip-model", tiny_clip_name, "--clip-weights", str(tiny_clip_weights),
                                 "--no-progress"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "gone.mp4: no such file" in r.output and "1 input(s) failed" in r.output
    assert (tmp_path / "f" / "single.npy").is_file() and (tmp_path / "f" / "cfr25.npy").is_file()


def test_linked_directories_are_followed_once_and_broken_links_reported(tmp_path, videos):
    root, elsewhere = tmp_path / "videos", tmp_path / "elsewhere"
    (root / "real").mkdir(parents=True)
    elsewhere.mkdir()
    os.symlink(videos["single"]["path"], root / "real" / "a.mp4")
    os.symlink(videos["cfr25"]["path"], elsewhere / "b.mp4")
    os.symlink(elsewhere, root / "linked")  # a symlinked subdirectory: rglob skipped it silently
    os.symlink(root, root / "real" / "loop")  # a link back up: must not loop
    os.symlink(tmp_path / "nowhere.mp4", root / "broken.mp4")
    bad: list = []
    found = collect_inputs([str(root)], bad=bad)
    assert [p.name for p in found] == ["b.mp4", "a.mp4"]
    assert [os.path.basename(entry) for entry, _ in bad] == ["broken.mp4"] and "broken symbolic link" in bad[0][1]
    with pytest.raises(Exception, match="broken symbolic link"):
        collect_inputs([str(root)])  # without a place to report it, it is an error, never silence


def test_a_video_and_its_features_in_one_folder_are_one_input(run, tmp_path, videos):
    sb = tmp_path / "sb"
    sb.mkdir()
    shutil.copy(videos["single"]["path"], sb / "t1.mp4")
    assert run("extract-features", sb, "--out", sb, "--no-progress").exit_code == 0
    preds = tmp_path / "preds.json"
    r = run(*detect_args(sb, "-o", preds))
    assert r.exit_code == 0, r.output
    assert list(json.loads(preds.read_text())["results"]) == ["t1"]
    assert "warning:" not in r.stderr and "1 video(s) done" in r.stderr
