"""1-D dynamic convolution (Chen et al., "Dynamic Convolution: Attention over Convolution Kernels", CVPR 2020).

Letters: B batch, T snippets, Ci/Co input/output channels, J kernels mixed by attention, k kernel size.

Each sample gets its own kernel, an attention-weighted sum of J learned kernels:

    pi(x) = softmax(FC2(ReLU(FC1(GAP(x)))) / tau)          attention over the J kernels, (B, J)
    W(x)  = sum_j pi_j(x) W_j,   b(x) = sum_j pi_j(x) b_j   aggregated per sample
    y     = conv1d(x, W(x), b(x))

GAP averages over the *valid* snippets only, and padded snippets are zeroed before the convolution, so the
padding of a window never changes the output at its real snippets.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class DynamicConv1d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, num_kernels: int,
                 temperature: float):
        super().__init__()
        assert kernel_size % 2 == 1, "odd kernel size keeps T unchanged with 'same' padding"
        self.temperature = temperature
        hidden = max(in_channels // 4, num_kernels)  # Chen et al. squeeze the pooled vector by 4
        self.attention = nn.Sequential(
            nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_kernels))
        self.weight = nn.Parameter(torch.empty(num_kernels, out_channels, in_channels, kernel_size))
        self.bias = nn.Parameter(torch.empty(num_kernels, out_channels))
        fan_in = in_channels * kernel_size
        for j in range(num_kernels):  # each kernel initialised like a plain Conv1d
            nn.init.kaiming_uniform_(self.weight[j], a=math.sqrt(5))
        nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x (B, Ci, T) channel-major (this is a convolution), valid (B, T) bool -> (B, Co, T)."""
        B, Ci, T = x.shape
        J, Co, _, k = self.weight.shape
        keep = valid[:, None, :].to(x.dtype)  # (B, 1, T)
        x = x * keep  # padded snippets read as zeros, like the conv's own zero padding
        pooled = x.sum(dim=2) / keep.sum(dim=2).clamp(min=1)  # GAP over valid snippets: (B, Ci)
        pi = F.softmax(self.attention(pooled) / self.temperature, dim=1)  # (B, J)
        weight = torch.einsum("bj,joik->boik", pi, self.weight.to(x.dtype))  # (B, Co, Ci, k)
        bias = pi @ self.bias.to(x.dtype)  # (B, Co)
        # One grouped convolution applies every sample's own kernel: the batch becomes the group axis.
        y = F.conv1d(x.reshape(1, B * Ci, T), weight.reshape(B * Co, Ci, k), bias.reshape(B * Co),
                     padding=k // 2, groups=B)  # (1, B*Co, T)
        return y.view(B, Co, T)  # (B, Co, T)
