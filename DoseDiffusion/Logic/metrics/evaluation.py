"""Comparing a predicted dose with a reference dose (both Gy, on one grid).

- :func:`gdp_hmm_mae`: the GDP-HMM challenge's MAE, as its public ``evaluation.ipynb`` computes it
  in the final-phase cell (repository RiqiangGao/GDP-HMM_AAPMChallenge): the reference is scaled so
  that D97 (the 3rd percentile) of the high-dose PTV equals its prescription; then
  ``MAE = Σ |ref − pred|`` over body voxels where ``ref > 5 Gy or pred > 5 Gy``, divided by the
  number of body voxels where ``ref > 5 Gy`` (Gy). The prediction is not rescaled.
- :func:`masked_mae`: mean |ref − pred| inside a mask (Gy).
- :func:`psnr`: 20·log10(peak / RMSE) inside a mask, peak the reference maximum (dB).
- :func:`ssim3d`: structural similarity with a 3-D Gaussian window (σ 1.5 voxels, 11³), constants
  of Wang et al. 2004 with the data range = reference maximum; mean over the mask.

The OpenKBP challenge's dose and DVH scores are in :mod:`dosediffusion.metrics.openkbp`.
"""

from __future__ import annotations

import numpy as np

from dosediffusion.errors import InputError


def _check(pred: np.ndarray, ref: np.ndarray) -> None:
    if np.shape(pred) != np.shape(ref):
        raise InputError(f"predicted dose {np.shape(pred)} and reference dose {np.shape(ref)} are on different grids")


def normalise_to_d97(dose_gy: np.ndarray, high_ptv: np.ndarray, prescription_gy: float) -> np.ndarray:
    """``dose_gy`` scaled so that D97 of ``high_ptv`` (its 3rd percentile) equals ``prescription_gy``."""
    if not np.any(high_ptv):
        raise InputError("D97 normalisation needs a non-empty high-dose PTV")
    d97 = float(np.percentile(dose_gy[high_ptv], 3))
    return dose_gy * (prescription_gy / (d97 + 1e-5))


def gdp_hmm_mae(pred: np.ndarray, ref: np.ndarray, body: np.ndarray, high_ptv: np.ndarray, prescription_gy: float,
                threshold_gy: float = 5.0) -> float:
    """The GDP-HMM challenge MAE in Gy (see the module docstring)."""
    _check(pred, ref)
    ref = normalise_to_d97(np.asarray(ref, dtype=np.float64), high_ptv, prescription_gy)
    pred = np.asarray(pred, dtype=np.float64)
    body = np.asarray(body, dtype=bool)
    counted = body & ((ref > threshold_gy) | (pred > threshold_gy))
    denominator = np.count_nonzero(body & (ref > threshold_gy))
    if denominator == 0:
        raise InputError(f"no body voxel of the reference dose exceeds {threshold_gy} Gy")
    return float(np.abs(ref - pred)[counted].sum() / denominator)


def masked_mae(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute dose difference inside ``mask`` (Gy)."""
    _check(pred, ref)
    if not np.any(mask):
        raise InputError("MAE inside an empty mask")
    return float(np.mean(np.abs(np.asarray(pred, np.float64) - ref)[mask]))


def psnr(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio (dB) of ``pred`` against ``ref``; infinite when they are equal."""
    _check(pred, ref)
    mask = np.ones(np.shape(ref), bool) if mask is None else mask
    mse = float(np.mean((np.asarray(pred, np.float64) - ref)[mask] ** 2))
    peak = float(np.max(ref))
    return float("inf") if mse == 0 else 20.0 * np.log10(peak / np.sqrt(mse))


def ssim3d(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None, sigma: float = 1.5, size: int = 11) -> float:
    """Mean 3-D SSIM of ``pred`` against ``ref`` over ``mask`` (all voxels by default)."""
    import torch  # only SSIM needs it: the rest of this module runs on what 3D Slicer bundles

    _check(pred, ref)
    x = torch.as_tensor(np.asarray(pred, np.float64))[None, None]
    y = torch.as_tensor(np.asarray(ref, np.float64))[None, None]
    axis = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(axis**2) / (2 * sigma**2))
    g /= g.sum()

    def blur(v: torch.Tensor) -> torch.Tensor:  # separable Gaussian, replicate padding
        for dim in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + dim] = size
            pad = [0, 0, 0, 0, 0, 0]
            pad[2 * (2 - dim)] = pad[2 * (2 - dim) + 1] = size // 2
            v = torch.nn.functional.conv3d(torch.nn.functional.pad(v, pad, mode="replicate"), g.view(shape))
        return v

    data_range = float(np.max(ref)) or 1.0
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    ssim = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    ssim = ssim[0, 0].numpy()
    mask = np.ones(ssim.shape, bool) if mask is None else mask
    return float(ssim[mask].mean())
