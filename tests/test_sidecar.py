"""The feature sidecar as a typed record (stale_cli.sidecar.FeatureMeta): existing sidecars read and write back
the same JSON, bad ones are refused with one line, hand-made ones need only fps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stale_cli.errors import DataError
from stale_cli.sidecar import FeatureMeta, read_features, source_mismatch, write_features

from feature_files import (  # tests/ is on sys.path (rootdir conftest)
    BAD_SIDECARS, detect_args, error_lines, features, good_features, sidecar, write_pair,
)

# A sidecar as `stale extract-features` 0.4 wrote it (every key, in its order), plus a key of a later version.
WRITTEN = {
    "fps": 4.0, "timestamps": [0.0, 0.25, 0.5], "duration": 0.75, "source": "/videos/a.mp4", "source_size": 1234,
    "source_mtime_ns": 1700000000000000000, "clip_model": "ViT-B-16", "clip_weights": "openai",
    "clip_activation": "quick_gelu", "precision": "fp32", "num_frames": 18, "num_rows": 3, "embed_dim": 4,
    "image_size": 224, "start_time": 0.0, "native_fps": 24.0, "frame_size": [640, 360], "rotation": 0,
    "mirrored": False, "decoder": "pyav", "warnings": ["a warning"], "stale_version": "0.4.0", "feature_format": 1,
    "from_the_future": {"x": 1},
}


def test_an_existing_sidecar_reads_typed_and_writes_back_unchanged(tmp_path):
    meta = FeatureMeta.from_json(WRITTEN)
    assert meta.fps == 4.0 and meta.timestamps == (0.0, 0.25, 0.5) and meta.frame_size == (640, 360)
    assert meta.clip_activation == "quick_gelu" and meta.extra == {"from_the_future": {"x": 1}}
    assert meta.to_json() == WRITTEN and list(meta.to_json()) == list(WRITTEN)  # same keys, same order
    write_features(tmp_path / "a.npy", np.ones((3, 4), np.float32), meta)
    assert json.loads((tmp_path / "a.json").read_text()) == WRITTEN
    _, again = read_features(tmp_path / "a.npy")
    assert again == meta and again.extra == meta.extra


def test_a_hand_made_sidecar_needs_only_fps(tmp_path):
    meta = FeatureMeta.from_json({"fps": 2})
    assert (meta.fps, meta.first_time, meta.source_fps, meta.clip_model) == (2.0, 0.0, 2.0, None)
    assert meta.to_json() == {"fps": 2.0}
    assert FeatureMeta.of(meta) is meta and FeatureMeta.of({"fps": 2}) == meta


@pytest.mark.parametrize("obj, message", [
    ([1, 2], "must be a JSON object with at least 'fps'"),
    ({"duration": 3}, "must be a JSON object with at least 'fps'"),
    ({"fps": 0}, "'fps' must be a number in"),
    ({"fps": True}, "'fps' must be a number in"),
    ({"fps": 4, "timestamps": [0, "x"]}, "'timestamps' must be a list of finite seconds"),
    ({"fps": 4, "num_rows": -1}, "'num_rows' must be a non-negative integer"),
    ({"fps": 4, "clip_weights": 3}, "'clip_weights' must be a string"),
    ({"fps": 4, "duration": float("inf")}, "'duration' must be seconds"),
])
def test_bad_sidecars_are_one_data_error(obj, message):
    with pytest.raises(DataError, match=message) as e:
        FeatureMeta.from_json(obj, "x.json")
    assert str(e.value).startswith("x.json: ") and "\n" not in str(e.value)


def test_writing_needs_the_fields_readers_rely_on(tmp_path):
    with pytest.raises(AssertionError, match="sidecar lacks"):
        write_features(tmp_path / "a.npy", np.ones((3, 4), np.float32), FeatureMeta(fps=4.0))
    assert not (tmp_path / "a.npy").exists()


def test_source_mismatch_reads_the_typed_fields(tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"0123")
    st = video.stat()
    meta = FeatureMeta(fps=4.0, source=str(video.resolve()), source_size=st.st_size, source_mtime_ns=st.st_mtime_ns)
    assert source_mismatch(meta, video) is None
    assert source_mismatch(meta.replace(source_size=None, source_mtime_ns=None), video) is None  # older sidecar
    assert source_mismatch(meta.replace(source_size=5), video) == "size of the source changed since"
    assert source_mismatch(meta.replace(source="/elsewhere.mp4"), video) == "made from '/elsewhere.mp4'"


@pytest.mark.parametrize("name", sorted(BAD_SIDECARS))
def test_malformed_sidecar_is_one_data_error(tmp_path, name):
    path = write_pair(tmp_path / f"{name}.npy", good_features(), sidecar(40, **BAD_SIDECARS[name]))
    # Wrong types and values are a "bad sidecar"; a sidecar that describes another array is refused as a mismatched
    # pair (issue 9 item 17).
    with pytest.raises(DataError, match="does not describe" if name in ("num_rows_wrong", "timestamps_short")
                       else "bad sidecar"):
        read_features(path)


@pytest.mark.parametrize("change, message", [
    (lambda m: m["timestamps"].reverse(), "'timestamps' must not decrease (row 1 at 5.5 s follows 5.75 s)"),
    (lambda m: m.update(timestamps=[k * 100.0 for k in range(24)]), "past the video's 'duration' of 6.0 s"),
])
def test_sidecar_timestamps_that_decrease_or_run_past_the_duration_are_refused(run, tmp_path, change, message):
    import json

    write_features(tmp_path / "v.npy", *features())
    meta = json.loads((tmp_path / "v.json").read_text())
    change(meta)
    (tmp_path / "v.json").write_text(json.dumps(meta))
    r = run(*detect_args(tmp_path / "v.npy"))
    assert r.exit_code == 1 and message in error_lines(r)[0] and "bad sidecar" in error_lines(r)[0], r.output
