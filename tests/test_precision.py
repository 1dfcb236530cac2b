"""--precision (auto's choice with the hardware detection mocked, casting, the sidecar) and --device (mps)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stale_cli.cli import app
from stale_cli.errors import InputError
from stale_cli.features.clip_backbone import cpu_has_native_bf16, load_clip, resolve_precision

AMX = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw amx_bf16 amx_tile\n"
AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
PLAIN = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"


def test_native_bf16_is_read_from_the_cpu_flags():
    assert cpu_has_native_bf16(AMX) and cpu_has_native_bf16(AVX512_BF16)
    assert not cpu_has_native_bf16(PLAIN) and not cpu_has_native_bf16("")


@pytest.mark.parametrize("device, native, want", [
    ("cuda", False, "fp16"), ("cuda:1", True, "fp16"),
    ("cpu", True, "bf16"), ("cpu", False, "fp32"),
    ("mps", True, "fp32"), ("mps", False, "fp32"),
])
def test_auto_picks_per_device_and_cpu(device, native, want):
    assert resolve_precision("auto", device, native_bf16=lambda: native) == want


def test_explicit_precision_and_bad_names():
    assert resolve_precision("BF16", "cpu", native_bf16=lambda: False) == "bf16"
    assert resolve_precision("fp32", "cuda", native_bf16=lambda: True) == "fp32"
    with pytest.raises(InputError, match="--precision must be auto, fp32, bf16 or fp16"):
        resolve_precision("int8", "cpu")


def test_auto_on_this_machine_follows_proc_cpuinfo():
    from pathlib import Path

    try:
        native = cpu_has_native_bf16(Path("/proc/cpuinfo").read_text())
    except OSError:
        native = False
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")


def test_bf16_casts_the_weights_and_agrees_with_fp32(tiny_clip_name, tiny_clip_weights):
    fp32 = load_clip(tiny_clip_name, str(tiny_clip_weights), precision="fp32")
    bf16 = load_clip(tiny_clip_name, str(tiny_clip_weights), precision="bf16")
    assert bf16.precision == "bf16" and bf16.model.visual.conv1.weight.dtype == torch.bfloat16
    assert fp32.model.visual.conv1.weight.dtype == torch.float32
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 48, 64, 3), dtype=np.uint8))
    a, b = fp32.encode_images(frames), bf16.encode_images(frames)
    assert a.dtype == b.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99
    t = bf16.encode_text(["high jump"])
    assert t.dtype == torch.float32 and torch.isfinite(t).all()


def test_cli_records_precision_and_rejects_a_bad_one(tiny_clip_name, tiny_clip_weights, videos, tmp_path):
    base = ["--clip-model", tiny_clip_name, "--clip-weights", str(tiny_clip_weights), "--no-progress",
            "--device", "cpu"]
    r = CliRunner().invoke(app, ["extract-features", str(videos["single"]["path"]), "--out", str(tmp_path),
                                 "--precision", "bf16", *base])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "single.json").read_text())
    assert meta["precision"] == "bf16" and meta["clip_activation"] == "gelu"
    for command in (["extract-features", str(videos["single"]["path"]), "--out", str(tmp_path / "x")],
                    ["detect", str(videos["single"]["path"]), "--classes", "a,b", "--mode", "clip"]):
        r = CliRunner().invoke(app, [*command, "--precision", "half", *base])
        assert r.exit_code == 1 and "Traceback" not in r.output
        assert [l for l in r.output.splitlines() if l.startswith("error:")] == [
            "error: --precision must be auto, fp32, bf16 or fp16, not 'half'"]


def test_device_auto_picks_cuda_then_mps_then_cpu(monkeypatch):
    from stale_cli.cli.app import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps") and resolve_device("mps") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(InputError, match="no Apple GPU"):
        resolve_device("mps")
    with pytest.raises(InputError, match="auto, cpu, cuda or mps"):
        resolve_device("tpu")


def test_training_under_torchrun_on_mps_is_refused_clearly(monkeypatch):
    from stale_cli.model.train import _distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InputError, match="Apple GPU .mps. run `stale train` as one process"):
        _distributed(torch.device("mps"))


def test_an_operation_the_apple_gpu_lacks_is_one_error_line(capsys):
    import typer

    from stale_cli.cli.app import user_errors

    with pytest.raises(typer.Exit) as e:
        with user_errors():
            raise NotImplementedError("The operator 'aten::foo' is not currently implemented for the MPS device. "
                                      "If you want this op to be added ...\nmore")
    assert e.value.exit_code == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "aten::foo" in err and "PYTORCH_ENABLE_MPS_FALLBACK=1" in err
    with pytest.raises(NotImplementedError):  # other NotImplementedErrors are bugs: not hidden
        with user_errors():
            raise NotImplementedError("something else")
