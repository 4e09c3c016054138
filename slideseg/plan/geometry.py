"""Tile geometry of a U-Net: pure functions of depth, padding and halo (no torch).

Valid-convolution U-Net of depth ``d`` (3x3 convs, 2x2 pooling)::

    valid inputs   n = 2**d * k + 4 * (2**(d + 1) - 1)      (depth 4: n = 16k + 12, n >= 188)
    output         n - (12 * 2**d - 8)                      (depth 4: n - 184)
    context        6 * 2**d - 4 px per side                 (depth 4: 92)

>>> g = Geometry(depth=4)
>>> g.output_size(572), g.context, g.nearest_valid(500)
(388, 92, (492, 508))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from slideseg.errors import ConfigError

Padding = Literal["valid", "same"]



@dataclass(frozen=True)
class Geometry:
    """Tile geometry of a U-Net: which input sizes are valid and what they produce.

    For ``padding='same'`` the network keeps the size, and ``halo`` is the context (per side) that
    tiling adds and crops; tiling a same-padded network is approximate, not exact.
    """

    depth: int
    padding: Padding = "valid"
    halo: int = 0

    @property
    def alignment(self) -> int:
        """Tile origins must be multiples of this (the pooling grid), in slide pixels."""
        pooling: int = 2**self.depth  # int ** int is typed Any (a negative power is a float)
        return pooling

    @property
    def context(self) -> int:
        """Input pixels lost (valid) or added as halo (same) on each side of a tile."""
        if self.padding == "valid":
            return 6 * self.alignment - 4
        return self.halo

    @property
    def min_input(self) -> int:
        """Smallest valid input edge."""
        n = 1
        while self._network_output(n) is None:
            n += 1
        return n

    def _network_output(self, n: int) -> int | None:
        """Output edge the network gives for input edge ``n``; None where ``n`` is not valid."""
        if self.padding == "same":
            return n if n > 0 and n % self.alignment == 0 else None
        for _ in range(self.depth):
            n -= 4
            if n <= 0 or n % 2:
                return None
            n //= 2
        n -= 4
        if n <= 0:
            return None
        for _ in range(self.depth):
            n = 2 * n - 4
            if n <= 0:
                return None
        return n

    def is_valid(self, n: int) -> bool:
        """Whether ``n`` is a valid input edge for the network alone."""
        return self._network_output(n) is not None

    def output_size(self, n: int) -> int:
        """Output edge for input edge ``n`` (the network's, before any halo crop)."""
        out = self._network_output(n)
        if out is None:
            lo, hi = self.nearest_valid(n)
            raise ConfigError(
                f"Tile {n} px is not valid for a depth-{self.depth} {self.padding}-conv U-Net: "
                f"{self.describe_valid()}; nearest are {lo} and {hi}."
            )
        return out

    def usable_output(self, n: int) -> int:
        """Output edge of a tile that is kept when tiling (same padding drops the halo)."""
        out = self.output_size(n)
        return out - 2 * self.halo if self.padding == "same" else out

    def describe_valid(self) -> str:
        if self.padding == "same":
            return f"sizes are multiples of {self.alignment}"
        r = self.min_input % self.alignment
        return f"sizes are {self.alignment}k+{r} (>= {self.min_input})"

    def nearest_valid(self, n: int) -> tuple[int, int]:
        """The largest valid input edge below ``n`` (or the smallest valid) and the smallest above."""
        lo = n - 1
        while lo >= self.min_input and not self.is_valid(lo):
            lo -= 1
        hi = n + 1
        while not self.is_valid(hi):
            hi += 1
        return (lo if lo >= self.min_input else self.min_input), hi

    def check_tile(self, n: int) -> int:
        """Return ``n`` if it can tile a slide, else raise a ConfigError naming valid sizes."""
        self.output_size(n)
        if self.usable_output(n) < self.alignment:
            smallest = self.smallest_tile_covering(self.alignment)
            raise ConfigError(
                f"Tile {n} px leaves {self.usable_output(n)} px of output per tile, less than the "
                f"pooling grid step {self.alignment}; use a tile of at least {smallest} px."
            )
        return n

    def smallest_tile_covering(self, out: int) -> int:
        """Smallest valid input edge whose usable output is at least ``out`` px."""
        n = self.min_input
        while not (self.is_valid(n) and self.usable_output(n) >= out):
            n += 1
        return n
