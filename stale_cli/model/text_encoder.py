"""Textual encoding, paper Eq. (2): CLIP's text transformer fed with a CoOp-style learnable prompt.

Letters: K classes, N learnable context tokens, L CLIP's context length (77), C' text width, C joint embed width.

The prompt of class k is the token-embedding sequence

    [SOT] [ctx_1] ... [ctx_N] [name tokens of class k] [.] [EOT] [pad] ...       (Eq. 2: F_lan = [G_p; G_e^k])

where ``ctx`` are N learnable vectors in token-embedding space (G_p, init N(0, 0.02)) shared by all classes
(CoOp's unified context) and the name tokens come from CLIP's vocabulary (``vocab.class_to_text``; CoOp appends
a full stop, so do we). The background row K+1 has no name in CLIP's vocabulary: the paper learns one
embedding G_e^bg in C' (randomly initialised). We put it exactly where a class name goes, as one learnable token:

    [SOT] [ctx_1] ... [ctx_N] [G_e^bg] [.] [EOT] [pad] ...

so the background prompt passes through the same text transformer, shares the context and lands in the same
joint space as the classes. The sentence embedding is read at the EOT position (open_clip's ``argmax`` pooling,
shifted by the inserted tokens), then ``ln_final`` and ``text_projection`` map C' to C.
"""

from __future__ import annotations

import copy
import torch
import torch.nn as nn

from stale_cli.errors import InputError
from stale_cli.vocab import class_to_text

_TOKENIZE_LENGTH = 1024  # tokenise without truncation so that over-long names can be reported, not cut


class PromptedTextEncoder(nn.Module):
    """CLIP's text tower (a copy: the given CLIP model is left untouched) with learnable context and background.

    Args:
        clip_model: an open_clip ``CLIP`` whose text tower uses ``argmax`` (EOT) pooling, e.g. ``ViT-B-16``.
        clip_model_name: the open_clip architecture name, for ``open_clip.get_tokenizer``.
        context_tokens: N, the number of learnable context vectors (when ``context_init`` is empty).
        context_init_std: their init std (CoOp: 0.02), also used for the background embedding.
        context_init: a hand-made prompt whose token embeddings initialise the context (N = its token count);
            "" for N random vectors.
        freeze: keep CLIP's text weights fixed (context and background still learn).
    """

    def __init__(self, clip_model: nn.Module, clip_model_name: str, context_tokens: int, context_init_std: float,
                 freeze: bool, context_init: str = ""):
        super().__init__()
        required = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
        if not all(hasattr(clip_model, a) for a in required) or getattr(clip_model, "text_pool_type", "") != "argmax":
            raise InputError(
                f"CLIP model {clip_model_name!r} has no OpenAI-style text tower (argmax/EOT pooling) that STALE "
                "can prompt; use an OpenAI-style open_clip architecture such as ViT-B-16")
        import open_clip  # heavy import, kept out of module import time

        self.clip_model_name = clip_model_name
        self.context_length = int(clip_model.positional_embedding.shape[0])  # L
        # The text tower is copied so that fine-tuning never changes the caller's CLIP (e.g. the image backbone
        # used for the training-free mode); the visual tower is simply not taken.
        self.token_embedding = copy.deepcopy(clip_model.token_embedding)
        self.positional_embedding = copy.deepcopy(clip_model.positional_embedding)
        self.transformer = copy.deepcopy(clip_model.transformer)
        self.ln_final = copy.deepcopy(clip_model.ln_final)
        self.text_projection = copy.deepcopy(clip_model.text_projection)
        attn_mask = getattr(clip_model, "attn_mask", None)
        self.register_buffer("attn_mask", None if attn_mask is None else attn_mask.clone(), persistent=False)
        if freeze:
            for p in self.parameters():
                p.requires_grad_(False)

        width = self.token_embedding.weight.shape[1]  # C'
        self._tokenizer = open_clip.get_tokenizer(clip_model_name)
        if context_init.strip():
            with torch.device("cpu"):  # token ids are data, also when the model is built on "meta" to be checked
                ids = self._tokenizer([context_init.strip()], context_length=_TOKENIZE_LENGTH)[0]  # SOT words EOT 0...
            words = ids[1 : int((ids != 0).sum()) - 1]  # (N,) the prompt's own tokens, without SOT and EOT
            with torch.no_grad():
                init = self.token_embedding.weight[words].detach().clone().float()  # (N, C')
        else:
            init = torch.randn(context_tokens, width) * context_init_std  # (N, C')
        self.context = nn.Parameter(init)  # G_p: (N, C')
        self.background = nn.Parameter(torch.randn(1, width) * context_init_std)  # G_e^bg: (1, C')

    @property
    def embed_dim(self) -> int:
        """C, the width of the encoded rows (after text_projection)."""
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection.out_features
        if self.text_projection is not None:
            return int(self.text_projection.shape[1])
        return int(self.token_embedding.weight.shape[1])  # no projection: the text width is the joint width

    def _tokenize(self, texts: list[str], names: list[str], extra: int) -> torch.Tensor:
        """Token ids (len(texts), L); ``extra`` = tokens inserted after SOT. Too long -> InputError naming it."""
        tokens = self._tokenizer(texts, context_length=_TOKENIZE_LENGTH)  # (K, 1024)
        lengths = (tokens != 0).sum(dim=1)  # SOT + name + EOT
        for name, n in zip(names, lengths.tolist()):
            if n + extra > self.context_length:
                raise InputError(
                    f"class name {name!r} is too long for CLIP's text encoder: {n - 2} tokens plus "
                    f"{extra} prompt tokens exceed its {self.context_length - 2}; use a shorter name")
        return tokens[:, : self.context_length - extra]  # (K, L - extra)

    def _encode_prompts(self, tokens: torch.Tensor, inserted: torch.Tensor) -> torch.Tensor:
        """Insert ``inserted`` (K, I, C') after SOT of ``tokens`` (K, L - I), run the text transformer -> (K, C)."""
        K, I, _ = inserted.shape
        device = self.token_embedding.weight.device
        tokens = tokens.to(device)
        dtype = self.token_embedding.weight.dtype
        x = self.token_embedding(tokens)  # (K, L - I, C')
        x = torch.cat([x[:, :1], inserted.to(dtype), x[:, 1:]], dim=1)  # (K, L, C')
        x = x + self.positional_embedding.to(dtype)
        eot = tokens.argmax(dim=-1) + I  # EOT has the largest id; it moved right by the inserted tokens
        attn_mask = self.attn_mask
        if attn_mask is not None:
            # Causal attention: the EOT output never sees the padding after it, so cropping the sequence to the
            # last EOT gives the same result with a fraction of the work (prompts are ~20 of 77 tokens).
            S = int(eot.max()) + 1
            x, attn_mask = x[:, :S], attn_mask[:S, :S]  # (K, S, C')
        x = self.transformer(x, attn_mask=attn_mask)  # batch-first in open_clip 3.x: (K, S, C')
        x = self.ln_final(x)
        x = x[torch.arange(K, device=device), eot]  # (K, C')
        if isinstance(self.text_projection, nn.Linear):
            x = self.text_projection(x)  # (K, C)
        elif self.text_projection is not None:
            x = x @ self.text_projection  # (K, C)
        return x.float()

    def encode_sentences(self, texts: list[str]) -> torch.Tensor:
        """Plain CLIP text features (len(texts), C) of whole sentences, without the learned context: with the
        tower frozen (the default) exactly CLIP's own, for the frozen-CLIP posterior at detection."""
        tokens = self._tokenizer(texts, context_length=self.context_length)  # (S, L)
        return self._encode_prompts(tokens, torch.zeros(len(texts), 0, self.context.shape[1]))  # (S, C)

    def forward(self, class_names: list[str]) -> torch.Tensor:
        """Eq. (2) through CLIP's text transformer: ``class_names`` (K) -> F_lan (K+1, C), row K = background."""
        K = len(class_names)
        N, width = self.context.shape
        texts = [class_to_text(n) + "." for n in class_names]
        cls_tokens = self._tokenize(texts, class_names, N)  # (K, L - N)
        bg_tokens = self._tokenize(["."], ["<background>"], N + 1)  # (1, L - N - 1)
        ctx = self.context.expand(K, N, width)  # (K, N, C')
        bg_prompt = torch.cat([self.context, self.background], dim=0)[None]  # (1, N + 1, C')
        # Two passes (classes, background) since their inserted lengths differ; both are small batches.
        classes = self._encode_prompts(cls_tokens, ctx)  # (K, C)
        background = self._encode_prompts(bg_tokens, bg_prompt)  # (1, C)
        return torch.cat([classes, background], dim=0)  # (K+1, C)
