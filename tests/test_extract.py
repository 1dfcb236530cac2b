"""The extraction pipeline and the feature files (stale_cli/features/extract/): content, sidecar, resume, duplicate
names, and ``--cache-features``, which never replaces another video's features or features made with other settings."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from stale_cli.errors import DecodeError
from stale_cli.features.extract import extract_many, extract_video
from stale_cli.sidecar import read_features
from stale_cli.timeline import Timeline
from stale_cli.video_ids import video_ids

from feature_files import contents, detect_args  # tests/ is on sys.path (rootdir conftest)


@pytest.fixture(scope="module")
def clip(tiny_clip_name, tiny_clip_weights):
    from stale_cli.features.clip_backbone import load_clip

    return load_clip(tiny_clip_name, str(tiny_clip_weights))


def test_extract_video_in_memory_matches_direct_encoding(clip, videos):
    from stale_cli.features.video import FrameSampler

    feats, meta = extract_video(videos["ntsc"]["path"], clip, fps=4.0, batch_size=5)
    assert feats.dtype == np.float16 and feats.shape == (13, clip.embed_dim)
    frames = np.concatenate([c.frames.numpy() for c in FrameSampler(videos["ntsc"]["path"], 4.0, decoder="pyav")])
    import torch

    direct = clip.encode_images(torch.from_numpy(frames)).numpy()
    np.testing.assert_allclose(feats.astype(np.float32), direct, atol=2e-3, rtol=1e-2)
    assert meta.fps == 4.0 and meta.num_rows == 13 and meta.num_frames == 90
    assert meta.timestamps == tuple(k / 4 for k in range(13))
    assert meta.duration == pytest.approx(3.003)
    assert meta.clip_model == clip.name and meta.clip_weights == clip.weights
    tl = Timeline(meta.timestamps[0], 1 / meta.fps, len(meta.timestamps))
    np.testing.assert_allclose(tl.to_seconds(np.arange(13)), meta.timestamps)


def test_scene_cuts_show_in_the_features(clip, videos):
    # cfr25 changes its background colour at 1.0 s and 2.5 s: rows inside a scene are closer than rows across
    feats, _ = extract_video(videos["cfr25"]["path"], clip, fps=4.0)
    f = feats.astype(np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    scene = (np.arange(len(f)) / 4.0 >= 1.0).astype(int) + (np.arange(len(f)) / 4.0 >= 2.5)
    same = f @ f.T
    within = np.mean([same[i, j] for i in range(len(f)) for j in range(len(f)) if i != j and scene[i] == scene[j]])
    across = np.mean([same[i, j] for i in range(len(f)) for j in range(len(f)) if scene[i] != scene[j]])
    assert within > across


def test_extract_video_errors(clip, bad_files):
    with pytest.raises(DecodeError, match="garbage.mp4"):
        extract_video(bad_files["garbage"], clip)


def test_extract_many_writes_resumes_and_reports(clip, videos, bad_files, tmp_path):
    out = tmp_path / "feats"
    paths = [videos["cfr25"]["path"], bad_files["garbage"], videos["single"]["path"], bad_files["truncated"]]
    warnings, errors = [], []
    s = extract_many(paths, out, clip, fps=4.0, batch_size=4, progress=False,
                     on_warning=warnings.append, on_error=errors.append)
    assert (s.done, s.skipped, len(s.failed)) == (3, 0, 1)
    assert s.failed[0][0] == bad_files["garbage"] and len(errors) == 1 and "garbage.mp4" in errors[0]
    assert any("single.mp4" in w and "sampling interval" in w for w in warnings)
    assert any("truncated.mkv" in w and "truncated" in w for w in warnings)
    assert s.frames == 16 + 1 + 20 and s.frames_per_second > 0
    feats, meta = read_features(out / "cfr25.npy")
    assert feats.shape == (16, clip.embed_dim) and np.load(out / "cfr25.npy").dtype == np.float16
    assert meta.source == str(videos["cfr25"]["path"].resolve()) and meta.decoder in ("decord", "pyav")
    assert not list(out.glob(".*tmp"))  # no temporary files left behind

    # resume: finished videos are skipped, a video whose sidecar is missing (interrupted) is redone
    (out / "single.json").unlink()
    mtime = (out / "cfr25.npy").stat().st_mtime_ns
    s = extract_many(paths, out, clip, fps=4.0, progress=False, on_warning=lambda m: None, on_error=lambda m: None)
    assert (s.done, s.skipped, len(s.failed)) == (1, 2, 1)
    assert (out / "single.json").is_file() and (out / "cfr25.npy").stat().st_mtime_ns == mtime

    # other settings: not silently replaced; --overwrite redoes
    errors = []
    s = extract_many(paths[:1], out, clip, fps=2.0, progress=False, on_error=errors.append)
    assert s.done == 0 and len(s.failed) == 1 and "fps 4.0" in errors[0] and "--overwrite" in errors[0]
    s = extract_many(paths[:1], out, clip, fps=2.0, overwrite=True, progress=False)
    assert s.done == 1 and json.loads((out / "cfr25.json").read_text())["fps"] == 2.0
    assert np.load(out / "cfr25.npy").shape == (8, clip.embed_dim)


def test_duplicate_stems_do_not_overwrite_each_other(clip, videos, tmp_path):
    other = tmp_path / "other" / "cfr25.mkv"
    other.parent.mkdir()
    other.write_bytes(videos["late"]["path"].read_bytes())
    paths = [videos["cfr25"]["path"], other, videos["ntsc"]["path"]]
    ids = video_ids(paths)
    assert ids[2] == "ntsc" and ids[0] != ids[1] and all(i.startswith("cfr25-") for i in ids[:2])
    assert video_ids(paths) == ids  # deterministic
    warnings = []
    s = extract_many(paths, tmp_path / "out", clip, progress=False, on_warning=warnings.append)
    assert s.done == 3 and sum("same name" in w for w in warnings) == 2
    sources = {json.loads((tmp_path / "out" / f"{i}.json").read_text())["source"] for i in ids}
    assert sources == {str(p.resolve()) for p in paths}


# ---------------------------------------------------------------- --cache-features keeps another video's features


def test_cache_never_replaces_another_videos_or_other_settings_features(run, tmp_path, videos):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    shutil.copy(videos["single"]["path"], a / "clip.mp4")
    shutil.copy(videos["late"]["path"], b / "clip.mp4")
    cache = tmp_path / "cache"
    assert run(*detect_args(a / "clip.mp4", "--cache-features", cache)).exit_code == 0
    mine = contents(cache / "clip.npy", cache / "clip.json")
    r = run(*detect_args(b / "clip.mp4", "--cache-features", cache))
    assert r.exit_code == 0 and "another video's features" in " ".join(r.stderr.split())
    assert contents(cache / "clip.npy", cache / "clip.json") == mine
    (other,) = [p for p in cache.glob("clip-*.npy")]
    assert read_features(other)[1].source == str((b / "clip.mp4").resolve())

    r = run(*detect_args(a / "clip.mp4", "--cache-features", cache, "--fps", "2"))
    assert r.exit_code == 0 and "not cached" in " ".join(r.stderr.split())
    assert contents(cache / "clip.npy", cache / "clip.json") == mine


# ---------------------------------------------------------------- resume by source identity


def test_a_symlinked_video_counts_as_finished(extract, videos, tmp_path):
    link = tmp_path / "link.mp4"
    os.symlink(videos["single"]["path"], link)
    assert extract(link, "--out", tmp_path / "f").exit_code == 0
    r = extract(link, "--out", tmp_path / "f")
    assert r.exit_code == 0 and "done 0, skipped 1" in r.output


def test_same_name_from_another_folder_is_not_taken_for_finished(extract, videos, tmp_path):
    a, b = tmp_path / "dA" / "clip.mp4", tmp_path / "dB" / "clip.mp4"
    for d, src in ((a, videos["single"]["path"]), (b, videos["late"]["path"])):
        d.parent.mkdir()
        shutil.copy(src, d)
    out = tmp_path / "f"
    assert extract(a, "--out", out).exit_code == 0
    r = extract(b, "--out", out)
    assert r.exit_code == 0 and "done 1, skipped 0" in r.output and "holds another video's features" in r.output
    renamed = [p for p in out.glob("clip-*.npy")]
    assert len(renamed) == 1
    assert read_features(renamed[0])[1].source == str(b.resolve())
    assert read_features(out / "clip.npy")[1].source == str(a.resolve())  # dA's features untouched
    assert "skipped 1" in extract(b, "--out", out).output and "skipped 1" in extract(a, "--out", out).output


def test_a_modified_source_is_extracted_again(extract, videos, tmp_path):
    video = tmp_path / "v.mp4"
    shutil.copy(videos["single"]["path"], video)
    assert extract(video, "--out", tmp_path / "f").exit_code == 0
    st = video.stat()
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    r = extract(video, "--out", tmp_path / "f")
    assert r.exit_code == 0 and "done 1" in r.output and "changed since" in r.output
