"""A small valid STALE checkpoint over the tiny CLIP, and the ways a crafted one can be wrong (each with the words
its one error line must hold). Used by tests/test_checkpoint.py and tests/test_cli_crafted_files.py."""

from __future__ import annotations

from pathlib import Path

from feature_files import DIM  # tests/ is on sys.path (rootdir conftest)


def make_checkpoint(path: Path, tiny_clip, tiny_clip_name) -> Path:
    """A small, valid checkpoint over the tiny CLIP (32-dimensional features, classes HighJump and Diving)."""
    import torch

    from stale_cli.model.checkpoint import save_checkpoint
    from stale_cli.model.config import LossConfig, ModelConfig
    from stale_cli.model.data.windows import DataConfig
    from stale_cli.model.stale import STALE

    torch.manual_seed(0)
    cfg = ModelConfig(feature_dim=DIM, embed_dim=32, num_snippets=16, clip_model=tiny_clip_name, encoder_layers=1,
                      num_heads=2, ffn_dim=64, decoder_layers=1, num_queries=4, context_tokens=4, dropout=0.0)
    save_checkpoint(path, STALE(cfg, tiny_clip).eval(), cfg, LossConfig(), DataConfig(num_snippets=16),
                    ["HighJump", "Diving"], feature_fps=4.0, clip_model=tiny_clip_name, epoch=1)
    return path


def _nan_first_weight(ck):
    key = next(k for k, v in ck["state_dict"].items() if v.is_floating_point())
    ck["state_dict"][key] = ck["state_dict"][key].clone().fill_(float("nan"))


def _config_change(section: str, **change):
    return lambda ck: ck[section].update(change)


# name -> (what is changed in the loaded checkpoint dict, what its one error line says)
CRAFTED_CHECKPOINTS = {
    "feature_fps_text": (lambda ck: ck.update(feature_fps="abc"), "feature_fps must be a number"),
    "feature_fps_nan": (lambda ck: ck.update(feature_fps=float("nan")), "feature_fps must be a number"),
    "class_names_int": (lambda ck: ck.update(class_names=5), "class_names must be a list of names"),
    "class_names_empty": (lambda ck: ck.update(class_names=[]), "no class names"),
    "epoch_text": (lambda ck: ck.update(epoch="x"), "epoch must be an integer"),
    "clip_model_list": (lambda ck: ck.update(clip_model=["x"]), "clip_model must be a string"),
    "num_heads_negative": (_config_change("model_config", num_heads=-2), "num_heads must be an integer in"),
    "ffn_dim_huge_float": (_config_change("model_config", ffn_dim=1e10), "ffn_dim must be an integer in"),
    "ffn_dim_huge": (_config_change("model_config", ffn_dim=10**10), "ffn_dim must be an integer in"),
    "ffn_dim_other_shape": (_config_change("model_config", ffn_dim=4096), "weights do not fit the model"),
    "num_snippets_huge": (_config_change("model_config", num_snippets=20000), "num_snippets must be an integer in"),
    "dropout_text": (_config_change("model_config", dropout="0.1"), "dropout must be a number"),
    "freeze_int": (_config_change("model_config", freeze_text_encoder=3), "must be true or false"),
    "theta_c_text": (_config_change("detect_config", theta_c="0.1"), "theta_c must be a number"),
    "thetas_empty": (_config_change("detect_config", thetas=[]), "thetas must be a list of 1 to"),
    "thetas_nan": (_config_change("detect_config", thetas=[float("nan")]), "thetas must be a number"),
    "top_k_zero": (_config_change("detect_config", top_k=0), "top_k must be an integer in"),
    "nms_sigma_inf": (_config_change("detect_config", nms_sigma=float("inf")), "nms_sigma must be a number"),
    "loss_negative": (_config_change("loss_config", weight_cls=-1.0), "weight_cls must be a number"),
    "overlap_one": (_config_change("data_config", overlap=1.0), "overlap must be a number"),
    "nan_weights": (_nan_first_weight, "NaN or infinite"),
    "history_text": (lambda ck: ck["extra"].update(history="x"), "extra history must be a list"),
    "history_record_text": (lambda ck: ck["extra"].update(history=[{"epoch": 1, "val_map50": "x"}]),
                            "extra history val_map50 must be a number"),
    "optimizer_list": (lambda ck: ck["extra"].update(optimizer=[1]), "extra optimizer must be a dict"),
    "state_dict_list": (lambda ck: ck.update(state_dict=[1, 2]), "no state dict"),
    "state_dict_junk": (lambda ck: ck["state_dict"].update(junk="x"), "the state dict must be names of tensors"),
}


def craft_checkpoint(good: Path, path: Path, change) -> Path:
    import torch

    ck = torch.load(good, map_location="cpu", weights_only=True)
    change(ck)
    torch.save(ck, path)
    return path
