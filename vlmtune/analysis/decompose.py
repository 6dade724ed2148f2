"""Magnitude and direction changes of a weight matrix (DoRA paper eqs. 2-4).

The paper writes W as (d x k) and decomposes it per column, ``W = ||W||_c * W / ||W||_c``; a
column there is the weight vector of one output feature. PyTorch's ``nn.Linear.weight`` is
(out, in), so the same vectors are its ROWS, and the norms below are over ``dim=1`` (as in
vlmtune's DoRA, whose magnitude has shape (out,))::

    ΔM = mean_n |m_t^n - m_0^n|                 m^n = ||W^n||            (eq. 3)
    ΔD = mean_n (1 - cos(W_t^n, W_0^n))                                  (eq. 4)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@torch.no_grad()
def decomposition_change(w0: torch.Tensor, wt: torch.Tensor) -> tuple[float, float]:
    """(ΔM, ΔD) between a pretrained weight ``w0`` and a tuned ``wt``, both (out, in)."""
    if w0.shape != wt.shape:
        raise ValueError(f"weight shapes differ: {tuple(w0.shape)} vs {tuple(wt.shape)}")
    w0, wt = w0.double(), wt.double()
    d_m = (wt.norm(dim=1) - w0.norm(dim=1)).abs().mean()
    d_d = (1.0 - F.cosine_similarity(wt, w0, dim=1, eps=1e-12)).mean()
    return float(d_m), float(d_d)


@dataclass
class Fit:
    """Least-squares line ΔM = slope * ΔD + intercept and Pearson correlation of (ΔD, ΔM)."""

    slope: float
    intercept: float
    correlation: float
    n: int


def fit_line(xs: list[float], ys: list[float]) -> Fit:
    """Regression of ``ys`` on ``xs``; NaN where it is undefined (< 2 points, constant x or y)."""
    n = len(xs)
    if n < 2:
        return Fit(math.nan, math.nan, math.nan, n)
    x = torch.tensor(xs, dtype=torch.float64)
    y = torch.tensor(ys, dtype=torch.float64)
    dx, dy = x - x.mean(), y - y.mean()
    sxx, syy, sxy = (dx * dx).sum(), (dy * dy).sum(), (dx * dy).sum()
    if sxx <= 0:
        return Fit(math.nan, math.nan, math.nan, n)
    slope = sxy / sxx
    corr = sxy / (sxx * syy).sqrt() if syy > 0 else torch.tensor(math.nan)
    return Fit(float(slope), float(y.mean() - slope * x.mean()), float(corr), n)
