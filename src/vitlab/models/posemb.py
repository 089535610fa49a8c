"""Position embeddings of the paper (Appendix D.4) and their resizing for higher-resolution fine-tuning.

Kinds:
  ``learned``     1-D learned table over the flattened patch sequence (the paper's default), prefix tokens included.
  ``learned_2d``  learned X and Y tables of D/2 each, concatenated per patch (the paper's "2-dimensional" variant).
  ``sincos_2d``   fixed 2-D sine-cosine (no parameters; prefix tokens get zeros).
  ``none``        no position information (the paper's "no positional embedding" ablation).
  ``relative``    the paper's relative positional embeddings (Appendix D.4), see :class:`RelativePositionLogits`.
  ``relative_2d`` the same with 2-D offsets (dy, dx) between patches instead of raster-order offsets.

Every absolute kind is a module ``tokens -> tokens + position`` so the transformer never branches on the kind; the
relative kinds add nothing to the tokens (their absolute module is :class:`NoPosEmbed`) and act inside every
attention layer through :func:`build_relative_logits`.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.errors import ConfigError, ShapeError

RELATIVE_KINDS = ("relative", "relative_2d")
POSEMB_KINDS = ("learned", "learned_2d", "sincos_2d", "none") + RELATIVE_KINDS
RESIZE_METHODS = ("official", "bilinear", "bicubic")
Grid = tuple[int, int]


def resize_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: int | Sequence[int],
    num_prefix_tokens: int = 1,
    method: str = "official",
    old_grid: Sequence[int] | None = None,
) -> torch.Tensor:
    """Resize a learned 1-D position table ``[1, prefix + gh*gw, D]`` to another patch grid.

    ``official`` reproduces the official code's ``scipy.ndimage.zoom(grid, (nh/gh, nw/gw, 1), order=1)``: bilinear
    interpolation whose sample points map the first and last rows/columns onto each other (corner-aligned). The prefix
    (class token) entries are kept unchanged. ``bilinear`` and ``bicubic`` are torch's half-pixel interpolations.
    ``old_grid`` is needed only for non-square grids (a square one is inferred).
    """
    if method not in RESIZE_METHODS:
        raise ConfigError(f"resize method {method!r} is unknown; expected one of {', '.join(RESIZE_METHODS)}")
    new_grid = _as_grid(new_grid)
    if pos_embed.ndim != 3:
        raise ShapeError(f"position embedding must be [1, tokens, D], got shape {tuple(pos_embed.shape)}")
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    num_patches, width = patches.shape[1], patches.shape[2]
    if old_grid is None:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ShapeError(
                f"cannot infer the grid of {num_patches} position embeddings (not a square); pass old_grid"
            )
        old_grid = (side, side)
    old_grid = _as_grid(old_grid)
    if old_grid[0] * old_grid[1] != num_patches:
        raise ShapeError(f"old_grid {old_grid} does not hold {num_patches} position embeddings")
    if old_grid == new_grid:
        return pos_embed
    grid = patches.reshape(1, old_grid[0], old_grid[1], width).permute(0, 3, 1, 2)  # [1, D, gh, gw]
    dtype = grid.dtype
    grid = grid.float()
    if method == "official":
        grid = F.interpolate(grid, size=new_grid, mode="bilinear", align_corners=True)
    else:
        grid = F.interpolate(grid, size=new_grid, mode=method, align_corners=False)
    patches = grid.to(dtype).permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], width)
    return torch.cat([prefix, patches], dim=1)


def sincos_2d(grid: Grid, width: int, temperature: float = 10_000.0) -> torch.Tensor:
    """Fixed 2-D sine-cosine table ``[gh*gw, D]``: a quarter of D each for sin(y), cos(y), sin(x), cos(x)."""
    if width % 4:
        raise ConfigError(f"sincos_2d position embeddings need a width divisible by 4, got {width}")
    ys, xs = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(width // 4, dtype=torch.float64) / (width // 4 - 1 or 1))
    ys = ys.flatten()[:, None].double() * omega[None]
    xs = xs.flatten()[:, None].double() * omega[None]
    return torch.cat([ys.sin(), ys.cos(), xs.sin(), xs.cos()], dim=1).float()


class LearnedPosEmbed(nn.Module):
    """The paper's default: one learned vector per token position, the class token's included."""

    def __init__(self, grid: Grid, width: int, num_prefix_tokens: int) -> None:
        super().__init__()
        self.grid, self.num_prefix_tokens = grid, num_prefix_tokens
        self.weight = nn.Parameter(torch.empty(1, num_prefix_tokens + grid[0] * grid[1], width))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + self.weight

    def resize(self, grid: Grid, method: str = "official") -> None:
        resized = resize_pos_embed(self.weight.data, grid, self.num_prefix_tokens, method, old_grid=self.grid)
        self.weight = nn.Parameter(resized)
        self.grid = grid

    def adapt_state(self, weight: torch.Tensor, method: str = "official") -> torch.Tensor:
        """A stored table of another grid, resized to this one (used when loading weights)."""
        if weight.shape == self.weight.shape:
            return weight
        return resize_pos_embed(weight, self.grid, self.num_prefix_tokens, method)


class Learned2dPosEmbed(nn.Module):
    """Learned row and column tables of D/2 each; a patch at (y, x) gets ``concat(row[y], col[x])``."""

    def __init__(self, grid: Grid, width: int, num_prefix_tokens: int) -> None:
        super().__init__()
        if width % 2:
            raise ConfigError(f"learned_2d position embeddings need an even width, got {width}")
        self.grid, self.num_prefix_tokens = grid, num_prefix_tokens
        self.row = nn.Parameter(torch.randn(grid[0], width // 2) * 0.02)
        self.col = nn.Parameter(torch.randn(grid[1], width // 2) * 0.02)
        self.prefix = nn.Parameter(torch.randn(1, num_prefix_tokens, width) * 0.02)

    def table(self) -> torch.Tensor:
        gh, gw = self.grid
        rows = self.row[:, None, :].expand(gh, gw, -1)
        cols = self.col[None, :, :].expand(gh, gw, -1)
        patches = torch.cat([rows, cols], dim=-1).reshape(1, gh * gw, -1)  # [1, N, D]
        return torch.cat([self.prefix, patches], dim=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + self.table()

    def resize(self, grid: Grid, method: str = "official") -> None:
        self.row = nn.Parameter(_resize_1d(self.row.data, grid[0], method))
        self.col = nn.Parameter(_resize_1d(self.col.data, grid[1], method))
        self.grid = grid

    def adapt_state(self, name: str, value: torch.Tensor, method: str = "official") -> torch.Tensor:
        target = getattr(self, name)
        if name in ("row", "col") and value.shape != target.shape:
            return _resize_1d(value, target.shape[0], method)
        return value


class SinCos2dPosEmbed(nn.Module):
    """Fixed sine-cosine position embeddings; nothing learned, nothing stored in checkpoints."""

    def __init__(self, grid: Grid, width: int, num_prefix_tokens: int) -> None:
        super().__init__()
        self.width, self.num_prefix_tokens = width, num_prefix_tokens
        self.resize(grid)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + self.table.to(tokens.dtype)

    def resize(self, grid: Grid, method: str = "official") -> None:
        self.grid = grid
        table = torch.cat([torch.zeros(self.num_prefix_tokens, self.width), sincos_2d(grid, self.width)])
        self.register_buffer("table", table[None], persistent=False)


class NoPosEmbed(nn.Module):
    """The paper's "no positional embedding" ablation: tokens pass unchanged."""

    def __init__(self, grid: Grid, width: int, num_prefix_tokens: int) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens

    def resize(self, grid: Grid, method: str = "official") -> None:
        self.grid = grid


_KINDS: dict[str, type[nn.Module]] = {
    "learned": LearnedPosEmbed,
    "learned_2d": Learned2dPosEmbed,
    "sincos_2d": SinCos2dPosEmbed,
    "none": NoPosEmbed,
    "relative": NoPosEmbed,  # relative kinds carry no absolute position: they act in the attention logits
    "relative_2d": NoPosEmbed,
}


def build_pos_embed(kind: str, grid: Grid, width: int, num_prefix_tokens: int) -> nn.Module:
    if kind not in _KINDS:
        raise ConfigError(f"posemb={kind!r} is unknown; expected one of {', '.join(POSEMB_KINDS)}")
    return _KINDS[kind](grid, width, num_prefix_tokens)


def relative_offset_index(grid: Grid, two_d: bool) -> tuple[torch.Tensor, int]:
    """``([N, N] offset index of each (query, key) patch pair, number of offsets)`` for an ``gh x gw`` grid.

    1-D (the paper's): the offset of raster positions ``p_q - p_k`` in ``[-(N-1), N-1]``: ``2N - 1`` offsets.
    2-D: the offset ``(y_q - y_k, x_q - x_k)``: ``(2gh - 1)(2gw - 1)`` offsets, index ``dy * (2gw - 1) + dx``
    after shifting both to start at 0.
    """
    gh, gw = grid
    n = gh * gw
    if not two_d:
        position = torch.arange(n)
        return position[:, None] - position[None, :] + (n - 1), 2 * n - 1
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + (gh - 1)
    dx = xs[:, None] - xs[None, :] + (gw - 1)
    return dy * (2 * gw - 1) + dx, (2 * gh - 1) * (2 * gw - 1)


class RelativePositionLogits(nn.Module):
    """Relative positional embeddings as Appendix D.4 describes them, for one attention layer.

    "For every given pair (one as query, and the other as key/value in the attention mechanism), we have an offset
    p_q - p_k, where each offset is associated with an embedding. Then, we simply run extra attention, where we use
    the original query (the content of query), but use relative positional embeddings as keys. We then use the logits
    from the relative attention as a bias term and add it to the logits of the main attention before the softmax."

    So the bias of head h for patches (q, k) is ``<query_h(q), r_h[offset(q, k)]> / sqrt(head_dim)``, scaled as the
    content logits are. Choices the paper leaves open, made here: one table ``[offsets + 3, D]`` per attention layer
    (each layer learns its own), split over the heads as the keys are (``r_h`` is head h's ``head_dim`` slice);
    initialised normal(0.02) like the absolute table. The class token has no position, so pairs that involve it
    get three embeddings of their own (as BEiT does): class -> class, class -> patch, patch -> class; without
    them the last layer of a class-token model, where only the class token's query is read, would learn nothing.
    ``two_d=False`` is the paper's 1-D raster offset; ``two_d=True`` indexes by (dy, dx).
    """

    def __init__(self, grid: Grid, width: int, num_heads: int, num_prefix_tokens: int, two_d: bool) -> None:
        super().__init__()
        if width % num_heads:
            raise ConfigError(f"width {width} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.num_prefix_tokens, self.two_d = num_prefix_tokens, two_d
        self.grid = grid
        index, num_offsets = relative_offset_index(grid, two_d)
        extra = 3 if num_prefix_tokens else 0
        self.table = nn.Parameter(torch.randn(num_offsets + extra, width) * 0.02)  # [offsets (+3), D]
        self.register_buffer("index", self._with_prefix(index, num_offsets), persistent=False)  # [P+N, P+N]

    def _with_prefix(self, index: torch.Tensor, num_offsets: int) -> torch.Tensor:
        """The patch-pair index grown by the prefix rows and columns (the three prefix embeddings)."""
        prefix = self.num_prefix_tokens
        if not prefix:
            return index
        n = index.shape[0]
        full = torch.full((prefix + n, prefix + n), num_offsets + 1, dtype=index.dtype)  # class -> patch
        full[:prefix, :prefix] = num_offsets  # class -> class
        full[prefix:, :prefix] = num_offsets + 2  # patch -> class
        full[prefix:, prefix:] = index
        return full

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        """Bias ``[B, heads, Nq, prefix + N]`` for queries ``q [B, heads, Nq, head_dim]`` (the first ``Nq`` tokens)."""
        batch, heads, num_queries, head_dim = q.shape
        if num_queries > self.index.shape[0]:
            raise ShapeError(f"relative position embeddings for a {self.grid} grid got {num_queries} queries")
        keys = self.table.view(-1, heads, head_dim).transpose(0, 1)  # [heads, offsets, head_dim]
        logits = torch.matmul(q * head_dim**-0.5, keys.transpose(-2, -1).unsqueeze(0))  # [B, H, Nq, offsets]
        index = self.index[:num_queries].expand(batch, heads, -1, -1)  # [B, H, Nq, prefix + N]
        return torch.gather(logits, -1, index)  # the logit of each pair's offset

    def resize(self, grid: Grid, method: str = "official") -> None:
        """Move to another patch grid: 2-D offset tables are interpolated over (dy, dx); 1-D raster offsets have no
        meaning that survives a change of the grid's width, so they refuse."""
        if grid == self.grid:
            return
        self.table = nn.Parameter(self.adapt_table(self.table.data, grid, method))
        self.grid = grid
        index, num_offsets = relative_offset_index(grid, self.two_d)
        self.register_buffer("index", self._with_prefix(index, num_offsets), persistent=False)

    def adapt_table(self, table: torch.Tensor, grid: Grid, method: str = "official", old_grid: Grid | None = None
                    ) -> torch.Tensor:
        """A ``[offsets (+3), D]`` table of ``old_grid`` (default: this layer's) resized for ``grid``; the three
        prefix embeddings are kept."""
        old = old_grid or self.grid
        if not self.two_d:
            raise ConfigError(
                f"posemb=relative (1-D raster offsets) cannot move from a {old[0]}x{old[1]} to a {grid[0]}x{grid[1]} "
                "patch grid; keep the resolution or train with posemb=relative_2d"
            )
        old_side = (2 * old[0] - 1, 2 * old[1] - 1)
        new_side = (2 * grid[0] - 1, 2 * grid[1] - 1)
        count = old_side[0] * old_side[1]
        offsets, prefix_rows = table[:count], table[count:]
        planes = offsets.reshape(1, *old_side, -1).permute(0, 3, 1, 2).float()  # [1, D, 2gh-1, 2gw-1]
        mode = "bilinear" if method == "official" else method
        planes = F.interpolate(planes, size=new_side, mode=mode, align_corners=method == "official")
        offsets = planes.permute(0, 2, 3, 1).reshape(new_side[0] * new_side[1], -1).to(table.dtype)
        return torch.cat([offsets, prefix_rows])


def build_relative_logits(kind: str, grid: Grid, width: int, num_heads: int, num_prefix_tokens: int
                          ) -> Optional[RelativePositionLogits]:
    """The per-layer relative term of ``kind`` (None for the absolute kinds)."""
    if kind not in RELATIVE_KINDS:
        return None
    return RelativePositionLogits(grid, width, num_heads, num_prefix_tokens, two_d=kind == "relative_2d")


def _resize_1d(table: torch.Tensor, length: int, method: str) -> torch.Tensor:
    """Resize a ``[L, d]`` table along L (the 1-D analogue of :func:`resize_pos_embed`)."""
    if table.shape[0] == length:
        return table
    # 1-D has no cubic mode in torch: "bicubic" falls back to linear here.
    line = table.T[None].float()  # [1, d, L]
    line = F.interpolate(line, size=length, mode="linear", align_corners=method == "official")
    return line[0].T.to(table.dtype).contiguous()


def _as_grid(grid: int | Sequence[int]) -> Grid:
    if isinstance(grid, int):
        return (grid, grid)
    grid = tuple(int(g) for g in grid)
    if len(grid) != 2:
        raise ShapeError(f"a patch grid is (height, width), got {grid}")
    return grid  # type: ignore[return-value]
