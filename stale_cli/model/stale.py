"""STALE (Nag et al., ECCV 2022, §3.2): zero-shot temporal action detection with vision-language prompting.

Glossary of letters used in shapes:
    B  batch (windows)                      T   snippets in a window (<= cfg.num_snippets)
    D  input feature width                  C   joint channels (cfg.embed_dim = CLIP's embed dim)
    C' CLIP text width                      K   classes; K+1 rows/columns = classes + background (last)
    Q  mask queries (cfg.num_queries)       N   learnable context tokens (cfg.context_tokens)
    Tm cfg.num_snippets, the mask localizer's fixed output length

Data flow of ``STALE.forward`` (paper Fig. 2):
    features (B,T,D) --TemporalEncoder, Eq. (1)--> F_vis (B,T,C)
    F_vis --RepresentationMasking, Eqs. (3)-(4)--> L_hat (B,T), foreground selection (B,T) bool
    text (K+1,C), F_vis^fg --CrossModalAdaptation, Eqs. (5)-(6)--> F_lan_hat (B,K+1,C)
    F_lan_hat, F_vis --VisionLanguageClassifier, Eq. (7)--> logits (B,T,K+1)
    F_vis --MaskLocalizer, Eq. (8)--> masks (B,T,T), masks[b,i,t] = fg prob. of snippet i in snippet t's mask
    F_vis --ConsistencyProjections (1-D convs of Eq. 12)--> E_p, E_m (B,T,C), used only by the loss
    logits, L_hat --detection_probabilities--> probs (B,T,K+1), what detection reads (not trained)
Text features come from ``STALE.encode_classes`` (Eq. 2, see text_encoder.py), computed once per class list.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from stale_cli.errors import InputError
from stale_cli.model.config import ModelConfig
from stale_cli.model.dynamic_conv import DynamicConv1d
from stale_cli.model.text_encoder import PromptedTextEncoder


def key_padding_mask(keep: torch.Tensor) -> torch.Tensor:
    """``keep`` (B, S) True = attend -> PyTorch's key_padding_mask (True = ignore).

    A row with no key to attend to would make softmax return NaN; such rows attend to every key instead, and
    every caller discards or zeroes what they produce.
    """
    ignore = ~keep  # (B, S)
    return ignore & keep.any(dim=1, keepdim=True)  # (B, S)


class TemporalEncoder(nn.Module):
    """Eq. (1): F_vis = T(E). Input projection D -> C (when D != C), transformer encoder, no positional encoding."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        C = cfg.embed_dim
        self.input_proj = nn.Linear(cfg.feature_dim, C) if cfg.feature_dim != C else nn.Identity()
        layer = nn.TransformerEncoderLayer(C, cfg.num_heads, cfg.ffn_dim, cfg.dropout, batch_first=True)
        # nested tensors would drop padded rows on some code paths only; keep one code path for every input
        self.encoder = nn.TransformerEncoder(layer, cfg.encoder_layers, enable_nested_tensor=False)

    def forward(self, features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        B, T, D = features.shape
        x = self.input_proj(features)  # (B, T, C)
        x = self.encoder(x, src_key_padding_mask=key_padding_mask(valid))  # (B, T, C)
        return x * valid[..., None].to(x.dtype)  # padded snippets set to zero for the convolutions downstream


class RepresentationMasking(nn.Module):
    """Eqs. (3)-(4): class-agnostic foreground mask L_hat from Q learnable mask queries."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        C, Q = cfg.embed_dim, cfg.num_queries
        self.queries = nn.Embedding(Q, C)  # the N_z mask queries
        layer = nn.TransformerDecoderLayer(C, cfg.num_heads, cfg.ffn_dim, cfg.dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, cfg.decoder_layers)
        # masking projection latent -> B_q: a 3-layer MLP, as in the mask-transformer the paper follows [8]
        self.mask_proj = nn.Sequential(nn.Linear(C, C), nn.ReLU(inplace=True), nn.Linear(C, C),
                                       nn.ReLU(inplace=True), nn.Linear(C, C))
        self.merge = nn.Linear(Q, 1)  # Eq. (4): W_q in R^{1 x Q} and its bias b_q, shared by all locations

    def forward(self, f_vis: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        B, T, C = f_vis.shape
        queries = self.queries.weight.expand(B, -1, -1)  # (B, Q, C)
        latent = self.decoder(queries, f_vis, memory_key_padding_mask=key_padding_mask(valid))  # (B, Q, C)
        b_q = self.mask_proj(latent)  # B_q: (B, Q, C)
        query_logits = b_q @ f_vis.transpose(1, 2)  # (B, Q, T)
        l_q = torch.sigmoid(query_logits)  # Eq. (3): L_q = sigma(B_q F_vis^T), (B, Q, T)
        fg_logits = self.merge(l_q.transpose(1, 2)).squeeze(-1)  # Eq. (4) before sigma: (B, T)
        return {"query_masks": l_q, "fg_logits": fg_logits, "fg": torch.sigmoid(fg_logits)}


class CrossModalAdaptation(nn.Module):
    """Eqs. (5)-(6): text rows attend to the foreground snippets of their video; residual scaled by alpha.

    One transformer decoder layer [41] (post-norm): self-attention among the K+1 text rows, co-attention with
    the text as queries and F_vis^fg as keys/values, FFN. Background snippets are excluded by the key padding
    mask. A video with no foreground snippet leaves its text unchanged (E_c = 0) rather than attending to nothing.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        C = cfg.embed_dim
        self.self_attn = nn.MultiheadAttention(C, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.co_attn = nn.MultiheadAttention(C, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(C, cfg.ffn_dim), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.ffn_dim, C))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(C), nn.LayerNorm(C), nn.LayerNorm(C)
        self.dropout = nn.Dropout(cfg.dropout)
        self.alpha = nn.Parameter(torch.full((C,), cfg.alpha_init))  # Eq. (6): alpha in R^C

    def forward(self, text: torch.Tensor, f_vis: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
        """text (K+1, C), f_vis (B, T, C), foreground (B, T) bool -> F_lan_hat (B, K+1, C)."""
        B, T, C = f_vis.shape
        f_lan = text.to(f_vis.dtype).expand(B, -1, -1)  # batched per video: (B, K+1, C)
        x = self.norm1(f_lan + self.dropout(self.self_attn(f_lan, f_lan, f_lan, need_weights=False)[0]))
        co = self.co_attn(x, f_vis, f_vis, key_padding_mask=key_padding_mask(foreground),
                          need_weights=False)[0]  # (B, K+1, C)
        x = self.norm2(x + self.dropout(co))
        e_c = self.norm3(x + self.dropout(self.ffn(x)))  # Eq. (5): E_c_hat, (B, K+1, C)
        has_fg = foreground.any(dim=1)[:, None, None].to(e_c.dtype)  # (B, 1, 1)
        return f_lan + self.alpha * e_c * has_fg  # Eq. (6): (B, K+1, C)


class VisionLanguageClassifier(nn.Module):
    """Eq. (7): P = s * l2(F_lan_hat) l2(F_vis)^T with a learnable logit scale s initialised from CLIP's.

    The classifier scores every snippet's F_vis. F_vis^fg in Eq. (7) is read as "the snippet features after
    foreground selection has shaped the text (Eqs. 5-6)": zeroing background snippets instead would give them
    an undefined cosine and no way to be classified as background, which Eq. (9) asks for at every snippet.
    """

    def __init__(self, init_logit_scale: float):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))  # log s, as CLIP stores it

    def forward(self, f_lan_hat: torch.Tensor, f_vis: torch.Tensor) -> torch.Tensor:
        """f_lan_hat (B, K+1, C), f_vis (B, T, C) -> logits (B, T, K+1), pre-softmax."""
        B, T, C = f_vis.shape
        scale = self.logit_scale.exp().clamp(max=100.0)  # CLIP's cap on the scale
        v = F.normalize(f_vis, dim=-1)  # l2 along channels: (B, T, C)
        t = F.normalize(f_lan_hat, dim=-1)  # (B, K+1, C)
        return scale * v @ t.transpose(1, 2)  # (B, T, K+1)


class MaskLocalizer(nn.Module):
    """Eq. (8), pairwise: M[i, t] = sigmoid(<q_t, k_i> / sqrt(d) + r[i - t] + b), column t = snippet t's mask.

    Departure from Eq. (8) (docs/model.md): the paper's head, three 1-D dynamic convolutions emitting Tm
    channels at each position, computes column t from F_vis[t-3 .. t+3] alone. F_vis carries no position (no
    positional encoding, by design), so that head is translation-equivariant and local, while its target names
    *absolute* rows: shift a window and the prediction shifts with it but the row indices of the target do not.
    The best it can learn is a position-independent mask (~0.5 under the class-balanced BCE of Eq. 10), and it
    does: its mask loss stays flat. Here the dynamic convolutions stay as the feature extractor (two layers, as
    the first two of the paper's three), and the last layer is replaced by a query-key product over the pair of
    snippets (t asks "is i in my instance?") plus a learned bias on their offset i - t, in snippets. The result
    is translation-equivariant (shifting the window shifts M along both axes) and every column sees the whole
    window, so a snippet can mark rows far from itself.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        C, k, J, tau = cfg.embed_dim, cfg.dynconv_kernel_size, cfg.dynconv_kernels, cfg.dynconv_temperature
        d, Tm = cfg.mask_dim, cfg.num_snippets
        self.convs = nn.ModuleList([DynamicConv1d(C, C, k, J, tau), DynamicConv1d(C, C, k, J, tau)])
        # unit-scale features before the product: otherwise q.k starts ~1e-4 and its gradient (each factor's is
        # the other) with it, and the head barely moves in a short run
        self.norm = nn.LayerNorm(C)
        self.query = nn.Linear(C, d)  # what snippet t (the column) looks for
        self.key = nn.Linear(C, d)  # what snippet i (the row) offers
        self.offset_bias = nn.Parameter(torch.zeros(2 * Tm - 1))  # r[i - t], index i - t + Tm - 1
        self.max_len = Tm

    def forward(self, f_vis: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """f_vis (B, T, C), valid (B, T) -> mask logits (B, T, T) (index [b, i, t], column t = snippet t)."""
        B, T, C = f_vis.shape
        x = f_vis.transpose(1, 2)  # convolutions run channel-major: (B, C, T)
        for layer in self.convs:
            x = F.relu(layer(x, valid))  # (B, C, T)
        x = self.norm(x.transpose(1, 2))  # back to time-major: (B, T, C)
        q, k = self.query(x), self.key(x)  # (B, T, d) each
        logits = k @ q.transpose(1, 2) / q.shape[-1] ** 0.5  # [b, i, t] = <k_i, q_t> / sqrt(d): (B, T, T)
        pos = torch.arange(T, device=f_vis.device)
        offset = pos[:, None] - pos[None, :] + self.max_len - 1  # i - t, shifted to index the table: (T, T)
        return logits + self.offset_bias[offset].to(logits.dtype)  # (B, T, T)


class ConsistencyProjections(nn.Module):
    """The two 1-D conv layers of Eq. (12): E_p (classification branch) and E_m (mask branch) from F_vis."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        C, k = cfg.embed_dim, cfg.dynconv_kernel_size
        self.clf = nn.Conv1d(C, C, k, padding=k // 2)
        self.mask = nn.Conv1d(C, C, k, padding=k // 2)

    def forward(self, f_vis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, C = f_vis.shape
        x = f_vis.transpose(1, 2)  # Conv1d is channel-major: (B, C, T); padded snippets are already zero
        return self.clf(x).transpose(1, 2), self.mask(x).transpose(1, 2)  # E_p, E_m: (B, T, C) each


SCORINGS = ("open", "paper")  # detection_probabilities: the open-vocabulary product / the paper's K+1 softmax


def detection_probabilities(logits: torch.Tensor, fg: torch.Tensor, num_query: int | None = None,
                            prior: torch.Tensor | None = None, prior_weight: float = 0.0,
                            scoring: str = "open") -> torch.Tensor:
    """Per-snippet probabilities of the names asked for, what detection reads.

    Args:
        logits: (B, T, R+1) of Eq. (7) over R = K + M names (the K asked for first, then M distractors: other
            names a snippet may show, see ``vocab.distractors``) and the background (last).
        fg: (B, T) L_hat of Eq. (4).
        num_query: K (None: every row is asked for, M = 0).
        prior: (B, T, R) frozen CLIP's posterior over the same R names from the raw snippet features, or None.
        prior_weight: w in [0, 1], its share of the fused class posterior (below).
        scoring: "open" (ours, below) or "paper": the softmax of Eq. (7) over the K names and the background
            alone, as the paper's inference reads it (distractors and prior unused).

    Returns (B, T, K+1): column k < K the probability that the snippet shows name k, column K the rest.

    "open": P(k) = class(k) x max(1 - P(background), L_hat), with class() the softmax over all R names, fused
    with the prior as a weighted geometric mean, renormalised: class ∝ softmax(logits)^(1-w) x prior^w.
    Which action a snippet shows is decided among every name it could show, so one name asked alone is not given
    every foreground snippet (the text has a say even at K = 1); whether it shows an action at all is the more
    confident of the classifier's background and the class-agnostic L_hat, trained on every class alike. The
    prior keeps CLIP's own reading of names the head never trained on: the classifier and prompt learned on the
    seen names do not fully carry to new ones (benchmarks/zero_shot.py, BENCHMARKS.md "Zero-shot").
    """
    logits = logits.float()
    R = logits.shape[-1] - 1
    K = R if num_query is None else int(num_query)
    if scoring == "paper":
        return torch.cat([logits[..., :K], logits[..., R:]], dim=-1).softmax(dim=-1)  # (B, T, K+1)
    if scoring != "open":
        raise InputError(f"scoring must be one of {', '.join(SCORINGS)}, not {scoring!r}")
    actions = class_posterior(logits, prior, prior_weight)  # (B, T, R)
    foreground = torch.maximum(1 - logits.softmax(dim=-1)[..., R], fg.float())  # (B, T)
    p = actions[..., :K] * foreground[..., None]  # (B, T, K)
    return torch.cat([p, 1 - p.sum(dim=-1, keepdim=True)], dim=-1)  # (B, T, K+1)


def class_posterior(logits: torch.Tensor, prior: torch.Tensor | None = None, prior_weight: float = 0.0) -> torch.Tensor:
    """Which of the R names a snippet shows, given that it shows one: the softmax of Eq. (7)'s (B, T, R+1) logits
    over the names (the background column left out), fused with frozen CLIP's ``prior`` (B, T, R) as a weighted
    geometric mean, ``softmax(logits)^(1-w) x prior^w`` renormalised: (B, T, R)."""
    logits = logits.float()
    actions = logits[..., :-1].softmax(dim=-1)  # (B, T, R)
    if prior is not None and prior_weight > 0:
        mixed = (1 - prior_weight) * actions.clamp_min(1e-12).log() + prior_weight * prior.float().clamp_min(1e-12).log()
        actions = mixed.softmax(dim=-1)  # (B, T, R)
    return actions


class STALE(nn.Module):
    """The STALE detection head with CLIP's prompted text encoder.

    Build with ``STALE(cfg, clip_model)``; ``clip_model`` is an open_clip CLIP of architecture ``cfg.clip_model``
    whose text tower is copied (its visual tower is not kept, so the state dict has no ``visual.*`` keys). To
    rebuild from a checkpoint without CLIP weights: ``STALE(cfg, open_clip.create_model(cfg.clip_model,
    pretrained=None))`` then ``load_state_dict``.
    """

    def __init__(self, cfg: ModelConfig, clip_model: nn.Module):
        super().__init__()
        self.text_encoder = PromptedTextEncoder(clip_model, cfg.clip_model, cfg.context_tokens,
                                                cfg.context_init_std, cfg.freeze_text_encoder, cfg.context_init)
        clip_dim = self.text_encoder.embed_dim
        if clip_dim != cfg.embed_dim:
            raise InputError(
                f"model embed_dim {cfg.embed_dim} does not match CLIP {cfg.clip_model!r}'s embedding width "
                f"{clip_dim}; Eq. (7) compares the two, so set embed_dim={clip_dim}")
        if cfg.embed_dim % cfg.num_heads:
            raise InputError(f"embed_dim {cfg.embed_dim} is not divisible by num_heads {cfg.num_heads}")
        self.cfg = cfg
        self.temporal_encoder = TemporalEncoder(cfg)
        self.representation_masking = RepresentationMasking(cfg)
        self.cross_modal = CrossModalAdaptation(cfg)
        scale = clip_model.logit_scale.detach().reshape(-1)[0]
        # a model built on the "meta" device (shapes only, to check a checkpoint) has no value to read
        self.classifier = VisionLanguageClassifier(1.0 if scale.is_meta else float(scale))
        self.mask_localizer = MaskLocalizer(cfg)
        self.consistency = ConsistencyProjections(cfg)

    def encode_classes(self, class_names: list[str]) -> torch.Tensor:
        """Eq. (2): text features (K+1, C) of the prompted class names; row K is the learned background.

        Differentiable (call it inside the training step when the text encoder or prompt is trained). A name
        too long for CLIP's context together with the N context tokens raises InputError naming it.
        """
        return self.text_encoder(class_names)

    def forward(self, features: torch.Tensor, valid: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the head on a batch of windows.

        Args:
            features: (B, T, D) snippet features, T <= cfg.num_snippets, D = cfg.feature_dim.
            valid: (B, T) bool, True for a real snippet, False for padding.
            text: (K+1, C) from ``encode_classes`` (training calls it inside its DistributedDataParallel step,
                ``train._TrainStep``, so the wrapper sees the text encoder's parameters used).

        Returns a dict (same keys in training and eval):
            logits (B, T, K+1): Eq. (7), pre-softmax, logit scale included; last column = background.
            probs (B, T, K+1): what detection reads, see :func:`detection_probabilities`.
            masks (B, T, T) in [0, 1] and mask_logits: Eq. (8); masks[b, i, t] = fg probability of snippet i in
                the mask predicted by snippet t.
            fg (B, T) in [0, 1] and fg_logits: L_hat of Eq. (4); foreground (B, T) bool: L_hat > theta_bin, valid.
            query_masks (B, Q, T): L_q of Eq. (3). text (B, K+1, C): F_lan_hat of Eq. (6).
            clf_features, mask_features (B, T, C): E_p and E_m of Eq. (12).
        """
        B, T, D = features.shape
        if D != self.cfg.feature_dim:
            raise InputError(f"features are {D}-dimensional but the model expects {self.cfg.feature_dim}; "
                             "use features from the same extractor as the checkpoint")
        if T > self.cfg.num_snippets:
            raise InputError(f"window of {T} snippets is longer than the model's {self.cfg.num_snippets}")
        f_vis = self.temporal_encoder(features, valid)  # Eq. (1): (B, T, C)
        masking = self.representation_masking(f_vis, valid)  # Eqs. (3)-(4)
        foreground = (masking["fg"] > self.cfg.theta_bin) & valid  # L_hat_bin: (B, T), no gradient by design
        f_lan_hat = self.cross_modal(text, f_vis, foreground)  # Eqs. (5)-(6): (B, K+1, C)
        logits = self.classifier(f_lan_hat, f_vis)  # Eq. (7): (B, T, K+1)
        mask_logits = self.mask_localizer(f_vis, valid)  # Eq. (8): (B, T, T)
        e_p, e_m = self.consistency(f_vis)  # Eq. (12): (B, T, C) each
        return {
            "logits": logits,
            "probs": detection_probabilities(logits.detach(), masking["fg"].detach()),
            "masks": torch.sigmoid(mask_logits),
            "mask_logits": mask_logits,
            "fg": masking["fg"],
            "fg_logits": masking["fg_logits"],
            "foreground": foreground,
            "query_masks": masking["query_masks"],
            "text": f_lan_hat,
            "clf_features": e_p,
            "mask_features": e_m,
        }
