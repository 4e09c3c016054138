"""The U-Net of Ronneberger et al. (2015): valid or same 3x3 convolutions, He initialisation.

One definition serves ``predict`` and ``train``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from slideseg.model.config import UNetConfig


def build_unet(cfg: UNetConfig, seed: int | None = None) -> UNet:
    """A He-initialised U-Net for ``cfg`` (weights drawn from ``seed`` when given)."""
    if seed is None:
        return UNet(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet(cfg)


def _double_conv(c_in: int, c_out: int, pad: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=pad), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=pad), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Encoder of ``depth`` poolings, decoder of as many 2x2 up-convolutions, skip connections
    centre-cropped to the decoder's size, and a 1x1 convolution to class logits."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.config = cfg
        pad = 1 if cfg.padding == "same" else 0
        chans = [cfg.width * 2**level for level in range(cfg.depth + 1)]
        self.down = nn.ModuleList()
        c_prev = cfg.in_channels
        for c in chans[:-1]:
            self.down.append(_double_conv(c_prev, c, pad))
            c_prev = c
        self.bottom = _double_conv(chans[-2], chans[-1], pad)
        self.drop = nn.Dropout2d(cfg.dropout)
        self.up = nn.ModuleList(nn.ConvTranspose2d(2 * c, c, 2, stride=2) for c in reversed(chans[:-1]))
        self.up_conv = nn.ModuleList(_double_conv(2 * c, c, pad) for c in reversed(chans[:-1]))
        self.head = nn.Conv2d(cfg.width, cfg.classes, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal init, std = sqrt(2 / N), N = inputs feeding one output unit; zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            elif isinstance(m, nn.ConvTranspose2d):
                n = m.in_channels  # stride == kernel: each output pixel sees one input pixel
            else:
                continue
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, K, h, w)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = nn.functional.max_pool2d(x, 2)
        x = self.drop(self.bottom(x))
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips), strict=True):
            x = up(x)
            dy = (skip.shape[-2] - x.shape[-2]) // 2
            dx = (skip.shape[-1] - x.shape[-1]) // 2
            skip = skip[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]
            x = conv(torch.cat([skip, x], dim=1))
        return self.head(x)
