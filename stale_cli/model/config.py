"""Model, loss and training configuration: frozen dataclasses whose defaults are the paper's values (docs/model.md).

Letters: B batch, T snippets, D input feature width, C channels, K classes (+1 background), Q mask queries,
N context tokens. CLI flags override fields with ``dataclasses.replace``; a checkpoint stores
``dataclasses.asdict`` of both and rebuilds them with ``ModelConfig(**d)``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    feature_dim: int = 512  # D: width of the input features (CLIP ViT-B/16: 512; I3D RGB+flow: 2048)
    embed_dim: int = 512  # C: must equal the CLIP text embedding width, since Eq. (7) compares the two
    num_snippets: int = 256  # T: window length (THUMOS14 256, ActivityNet 100; paper §4)
    clip_model: str = "ViT-B-16"  # open_clip architecture whose text tower encodes the class names
    # Eq. (1): temporal transformer encoder, no positional encoding (paper §3.2 finds it harmful).
    encoder_layers: int = 2
    num_heads: int = 8
    ffn_dim: int = 1024
    dropout: float = 0.1
    # Eq. (2): CoOp-style prompt, N learnable context vectors before the class-name tokens.
    context_tokens: int = 16  # N when context_init is empty (the paper's random init)
    context_init_std: float = 0.02
    # Our departure (issue 15): the context starts as the token embeddings of this hand-made prompt (CoOp's
    # "a photo of a" initialisation), so N = its token count and the untrained prompt reads "a video of a person
    # <name>." Learned from random vectors on 15 seen names, the context does not carry to new names; started here
    # it begins where CLIP's zero-shot prompt is. "" gives the paper's N random vectors.
    context_init: str = "a video of a person"
    # Our departure: frozen by default. The paper (Table 5) reports fine-tuning 24.9 vs frozen 22.8 avg mAP, but
    # tuned on 15 seen names the tower drifts from the text prior unseen names rely on (benchmarks/zero_shot.py).
    freeze_text_encoder: bool = True
    # Eqs. (3)-(4): representation masking.
    num_queries: int = 20  # Q (paper Table 4)
    decoder_layers: int = 2  # transformer decoder producing the Q mask embeddings
    theta_bin: float = 0.5  # binarisation threshold of the merged foreground mask L_hat
    # Eqs. (5)-(6): cross-modal adaptation.
    alpha_init: float = 1e-3  # per-channel residual scale, small to keep CLIP's language prior
    # Eq. (8): mask localizer: two 1-D dynamic convolution layers, then a pairwise query-key product plus a
    # learned bias on the snippet offset (our departure from the paper's third convolution, see MaskLocalizer).
    mask_dim: int = 128  # d: width of the query and key of the pairwise product
    dynconv_kernels: int = 4  # kernels mixed by attention (Chen et al. 2020)
    dynconv_kernel_size: int = 3
    # Softmax temperature of the kernel attention. Chen et al. anneal it from 30 to 1 early in training; we keep
    # one constant value (1: plain softmax), which their ablation shows also trains.
    dynconv_temperature: float = 1.0
    # Eq. (12): inter-branch consistency.
    theta_c: float = 0.5  # threshold on class probabilities (P_bin)
    theta_m: float = 0.5  # threshold on mask probabilities (M_bin)
    consistency_topk: int = 8  # top-k snippets compared between the two branches


@dataclass(frozen=True)
class LossConfig:
    weight_cls: float = 1.0  # Eq. (9)
    weight_mask: float = 1.0  # Eq. (10)
    dice_weight: float = 0.4  # lambda_2 in Eq. (10)
    weight_comp: float = 1.0  # Eq. (11)
    weight_const: float = 1.0  # Eq. (12)


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe. The paper (§4) trains everything with one Adam learning rate (1e-5 THUMOS14, 1e-4
    ActivityNet) for 15 epochs; measured on benchmarks/quality.py that recipe leaves the new head layers far from
    converged on a THUMOS14-sized run, while a larger rate for the text tower degrades CLIP. So each parameter
    group has its own rate (BENCHMARKS.md "Quality" has the comparison)."""

    # None: 15 epochs (paper §4), or more so that the run takes at least train.MIN_STEPS optimizer steps. A
    # THUMOS14-sized set (200 videos, ~40 steps an epoch) is not affected; on benchmarks/quality.py's 40 videos (8 steps an epoch)
    # 15 epochs left the classifier short: 30 scored 80.6 avg mAP against 78.6 over 4 seeds (BENCHMARKS.md
    # "Quality"). A number: exactly that many epochs.
    epochs: int | None = None
    lr: float = 5e-4  # new head layers (Eqs. 1, 3-8, 12); the paper's single rate: 1e-5 THUMOS14, 1e-4 ActivityNet
    lr_prompt: float = 1e-3  # learned prompt context and background embedding (Eq. 2)
    lr_text: float = 1e-6  # CLIP's text tower when fine-tuned: much lower, to keep CLIP's language prior
    batch_size: int = 16  # windows per step (per process under torchrun); the paper does not say
    weight_decay: float = 1e-4  # AdamW, head weights only (not biases, norms, embeddings, CLIP); paper: Adam, none
    warmup: float = 0.05  # share of all steps with a linear warm-up, then cosine decay to zero
    grad_clip: float = 1.0  # max gradient norm, per parameter group (the text tower's cannot starve the head)
    seed: int = 0
    # Share of the training subset's videos held out to pick the best epoch. 0 by default: train on every video
    # and keep the last epoch, which the cosine schedule has brought to rest. On benchmarks/quality.py (3 seeds,
    # 0.1 held out) the last epoch scored 78.3-78.8 avg mAP, the epoch picked by mAP@0.5 on the 4 held-out videos
    # 70.2-79.1: that score saturates mid-run and noise decides.
    val_fraction: float = 0.0
    # Draw windows of rare classes more often (repeat factor sampling, data/dataset.py RepeatFactorSampler). Our
    # addition; in the benchmark's 40-video THUMOS14 sets a class has from 2 to about 40 training instances. On
    # benchmarks/quality.py, 12 seeds, paired: better on 9, +0.6 avg mAP on average (BENCHMARKS.md "Quality").
    balance_classes: bool = True
    # Instances of classes outside the training names (a zero-shot split's unseen classes): True leaves them out of
    # every loss term (the paper's zero-shot setting uses this knowledge that something happens there); False calls
    # them background, strict open-vocabulary training that knows nothing of the unseen classes.
    ignore_unseen: bool = True
    amp: bool = True  # mixed precision, CUDA only
    num_workers: int = 0  # DataLoader workers (windows are cut from features held in memory)
