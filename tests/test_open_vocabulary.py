"""Open vocabulary: distractor names, the text cache, strict open-vocabulary training, old checkpoints' prompt."""

from __future__ import annotations

import numpy as np

from stale_cli.vocab import distractors, generic_action_names, name_key


def test_generic_names_are_the_shipped_names_each_once():
    names = generic_action_names()
    # THUMOS14's 20 and ActivityNet's 200, of which 7 are the same action spelled alike (pole vault, high jump, ...)
    assert len(names) == len({name_key(n) for n in names}) == 213
    assert "PoleVault" in names or "Pole vault" in names


def test_distractors_leave_out_the_query_in_any_spelling_and_put_training_names_first():
    got = distractors(["pole vault", "my own action"], ["HighJump", "PoleVault", "Diving"])
    assert got[:2] == ["HighJump", "Diving"]  # the checkpoint's names first, the query's spelling dropped
    keys = [name_key(n) for n in got]
    assert "polevault" not in keys and "myownaction" not in keys and len(keys) == len(set(keys))
    assert distractors(["x"], ["HighJump"], generic=False) == ["HighJump"]


def test_text_cache_encodes_each_name_once(tmp_path, monkeypatch):
    from stale_cli.textcache import cached_rows

    monkeypatch.setenv("STALE_CACHE_DIR", str(tmp_path))
    calls = []

    def encode(names):
        calls.append(list(names))
        return np.stack([np.full(3, len(n), np.float32) for n in names])

    first = cached_rows({"clip": "a"}, ["ab", "abc"], encode)
    again = cached_rows({"clip": "a"}, ["abc", "d", "ab"], encode)
    assert calls == [["ab", "abc"], ["d"]]  # only the new name is encoded the second time
    np.testing.assert_array_equal(again, [[3, 3, 3], [1, 1, 1], [2, 2, 2]])
    np.testing.assert_array_equal(first, [[2, 2, 2], [3, 3, 3]])
    cached_rows({"clip": "b"}, ["ab"], encode)  # another encoder: its own entry
    assert calls[-1] == ["ab"]
    (tmp_path / "junk").write_text("x")
    for f in tmp_path.glob("text-*.npz"):
        f.write_bytes(b"not an npz")  # a damaged cache only costs time
    np.testing.assert_array_equal(cached_rows({"clip": "a"}, ["ab"], encode), [[2, 2, 2]])


def test_strict_training_calls_unseen_instances_background():
    from stale_cli.data.annotations import parse_annotations
    from stale_cli.data.dataset import VideoSet, WindowDataset
    from stale_cli.data.windows import DataConfig

    fps, rows = 2.0, 40
    ann = parse_annotations({"database": {"v": {"subset": "train", "duration": rows / fps, "annotations": [
        {"label": "seen", "segment": [2.0, 6.0]}, {"label": "unseen", "segment": [10.0, 14.0]}]}}})
    meta = {"fps": fps, "timestamps": [k / fps for k in range(rows)], "duration": rows / fps}
    vs = VideoSet(list(ann.videos.values()), {"v": np.zeros((rows, 4), np.float16)}, {"v": meta})
    cfg = DataConfig(num_snippets=rows, overlap=0.0, jitter=0.0, empty_window_keep=1.0)
    default = WindowDataset(vs, ["seen"], cfg)[0]
    strict = WindowDataset(vs, ["seen"], cfg, ignore_unseen=False)[0]
    inside = slice(int(10 * fps), int(14 * fps))
    assert default["ignore"][inside].all() and not strict["ignore"].any()
    assert (strict["labels"][inside] == 1).all()  # background (K = 1)


def test_checkpoints_without_a_prompt_init_keep_their_random_context(tmp_path, tiny_clip, tiny_clip_name):
    import torch

    from stale_cli.checkpoint import load_checkpoint, save_checkpoint
    from stale_cli.data.windows import DataConfig
    from stale_cli.model.config import LossConfig, ModelConfig
    from stale_cli.model.stale import STALE

    cfg = ModelConfig(feature_dim=32, embed_dim=32, num_snippets=16, clip_model=tiny_clip_name, encoder_layers=1,
                      num_heads=2, ffn_dim=64, context_tokens=4, num_queries=4, decoder_layers=1, context_init="")
    path = tmp_path / "old.pt"
    save_checkpoint(path, STALE(cfg, tiny_clip), cfg, LossConfig(), DataConfig(num_snippets=16), ["a", "b"], 2.0,
                    tiny_clip_name)
    raw = torch.load(path, weights_only=True)
    del raw["model_config"]["context_init"]  # as stale 0.2 wrote it
    torch.save(raw, path)
    model, info = load_checkpoint(path)
    assert info.model_config.context_init == "" and model.text_encoder.context.shape == (4, 32)


def test_center_video_by_hand():
    from stale_cli.data.windows import center_video

    x = np.array([[2.0, 0.0], [0.0, 2.0]], np.float32)
    # normalised rows (1, 0), (0, 1); their mean (0.5, 0.5) removed; renormalised
    np.testing.assert_allclose(center_video(x, 1.0), np.array([[1, -1], [-1, 1]]) / np.sqrt(2), rtol=1e-6)
    np.testing.assert_array_equal(center_video(x, 0.0), x)  # 0: the features as extracted
