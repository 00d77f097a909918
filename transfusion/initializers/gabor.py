"""A bank of Gabor filters for a first convolution (the paper's "Gabor" initialisation).

Filter f(x, y) = exp(-(x'^2 + gamma^2 y'^2) / (2 sigma^2)) * cos(2 pi x' / lambda + psi),
with x' = x cos(theta) + y sin(theta), y' = -x sin(theta) + y cos(theta), on the kernel's pixel
grid centred at 0. The bank is the grid wavelengths x orientations x phases:
- orientations: 8 angles in [0, pi) (4 when there are fewer than 16 filters);
- phases: 0 (even, "bar" detector) and pi/2 (odd, "edge" detector);
- wavelengths: as many as needed to reach ``out_channels``, geometrically spaced from 2.5 px
  (just above the Nyquist limit) to the kernel size; the filters are taken in the order
  wavelength, orientation, phase, so a partial last wavelength drops whole (orientation, phase)
  pairs from its end;
- sigma = 0.56 lambda (a one-octave bandwidth), aspect gamma = 0.5.
Each filter is made zero-mean (no response to flat regions) and unit-norm.

Colour handling: the paper does not say. These are luminance filters: the same spatial filter
on every input channel (divided by sqrt(in_channels)), so they respond to grey-level structure
and are blind to colour, like most of the pretrained ImageNet conv1 filters; no colour-opponent
filters are generated. With one input channel (X-rays) the filter is used as it is.
The caller scales the whole bank to a target Frobenius norm.
"""
from __future__ import annotations

import math

import torch

SIGMA_PER_WAVELENGTH = 0.56
GAMMA = 0.5
MIN_WAVELENGTH = 2.5
PHASES = (0.0, math.pi / 2)


def gabor_kernel(size: int, wavelength: float, theta: float, phase: float,
                 sigma: float | None = None, gamma: float = GAMMA) -> torch.Tensor:
    """One (size, size) float64 Gabor filter (not normalised); row index is y, column x."""
    sigma = SIGMA_PER_WAVELENGTH * wavelength if sigma is None else sigma
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    y, x = torch.meshgrid(r, r, indexing="ij")
    xr = x * math.cos(theta) + y * math.sin(theta)
    yr = -x * math.sin(theta) + y * math.cos(theta)
    envelope = torch.exp(-(xr ** 2 + gamma ** 2 * yr ** 2) / (2 * sigma ** 2))
    return envelope * torch.cos(2 * math.pi * xr / wavelength + phase)


def gabor_bank(out_channels: int, in_channels: int, kernel_size: int
               ) -> tuple[torch.Tensor, list[dict]]:
    """(out_channels, in_channels, k, k) float32 bank with unit-norm filters, and the parameters
    of each filter (wavelength, theta, phase)."""
    n_theta = 8 if out_channels >= 16 else 4
    per_wavelength = n_theta * len(PHASES)
    n_wavelengths = max(1, math.ceil(out_channels / per_wavelength))
    top = max(float(kernel_size), MIN_WAVELENGTH)
    wavelengths = ([MIN_WAVELENGTH] if n_wavelengths == 1 else
                   [MIN_WAVELENGTH * (top / MIN_WAVELENGTH) ** (i / (n_wavelengths - 1))
                    for i in range(n_wavelengths)])
    params, filters = [], []
    for lam in wavelengths:
        for t in range(n_theta):
            theta = math.pi * t / n_theta
            for phase in PHASES:
                if len(filters) == out_channels:
                    break
                f = gabor_kernel(kernel_size, lam, theta, phase)
                f = f - f.mean()
                norm = f.norm()
                if norm < 1e-12:  # cannot happen for the grid above; guard anyway
                    raise ValueError(f"degenerate Gabor filter (lambda={lam}, theta={theta})")
                filters.append(f / norm)
                params.append({"wavelength": round(lam, 4), "theta": round(theta, 6),
                               "phase": round(phase, 6)})
    bank = torch.stack(filters)[:, None].expand(-1, in_channels, -1, -1) / math.sqrt(in_channels)
    return bank.to(torch.float32).contiguous(), params
