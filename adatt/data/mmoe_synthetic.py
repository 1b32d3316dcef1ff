"""The controllable-correlation synthetic data of the MMoE paper (Ma et al., KDD 2018, section 4.1).

"Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts", https://doi.org/10.1145/3219819.3220007. Two regression
tasks whose relatedness is set by the cosine ``p`` of their weight vectors:

1. orthogonal unit vectors ``u1, u2`` in R^d (Gaussian draws, Gram-Schmidt);
2. ``w1 = c u1``, ``w2 = c (p u1 + sqrt(1 - p^2) u2)``, so ``cos(w1, w2) = p`` exactly;
3. ``x ~ N(0, I_d)``;
4. ``y_i = w_i^T x + sum_{k=1..m} sin(alpha_k w_i^T x + beta_k) + eps_i``,
   ``eps_i ~ N(0, 0.01)`` (variance 0.01, i.e. standard deviation 0.1).

Defaults follow the paper: ``d = 100``, ``c = 1``, ``m = 10``. The paper calls
``alpha_k, beta_k`` "given parameters" without values; here they are fixed
constants of the data set, drawn once from ``N(0, 1)`` by
``numpy.random.default_rng(sin_seed)`` (``sin_seed = 0``), independent of the
data ``seed`` (which draws ``u1, u2``, ``x`` and the noise). Fixing them keeps
the label correlation the same function of ``p`` for every data seed: both
tasks share one nonlinearity ``h(z) = z + sum_k sin(alpha_k z + beta_k)``, so by
Mehler's expansion the label Pearson correlation is a weighted mean of ``p^n``,
below ``p`` for ``0 < p < 1`` and equal to it only for a linear ``h``. Measured
with the defaults: 0.09, 0.47, 0.88, 0.99 at ``p`` = 0.1, 0.5, 0.9, 1
(``info["label_correlation"]`` reports it for each data set; ``num_sin=0``
gives the linear case, where it equals ``p`` up to the noise).

Tensors: ``dense [N, d]`` (the raw ``x``, already standard), ``cat [N, 0]``
(no categorical fields), ``labels [N, 2]`` (tasks ``task1``, ``task2``,
regression). Rows ``[0, n_train)`` are train, then validation, then test.

Example:
    >>> s = load_mmoe_synthetic(correlation=0.5, rows=2_000, dim=8, seed=0)
    >>> s.sizes(), s.schema.task_kinds
    ({'train': 1600, 'valid': 200, 'test': 200}, ['regression', 'regression'])
    >>> round(s.info["weight_cosine"], 6)
    0.5
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from adatt.data.batch import TensorDataset
from adatt.data.errors import DataError
from adatt.data.schema import FeatureSchema, TaskSpec
from adatt.data.splits import Splits

__all__ = ["mmoe_synthetic_arrays", "load_mmoe_synthetic"]


def mmoe_synthetic_arrays(
    rows: int,
    correlation: float,
    dim: int = 100,
    seed: int = 0,
    *,
    scale: float = 1.0,
    num_sin: int = 10,
    noise_std: float = 0.1,
    sin_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Generate ``x float32 [rows, dim]``, ``y float32 [rows, 2]`` and the generator's parameters.

    Args:
        rows: number of examples.
        correlation: ``p`` in [-1, 1], the cosine of the two task weight vectors.
        dim: input dimension ``d`` (>= 2; default 100).
        seed: seed of the weight vectors, the inputs and the noise.
        scale: ``c`` (default 1).
        num_sin: ``m``, the number of sine terms (default 10).
        noise_std: standard deviation of ``eps`` (default 0.1: variance 0.01).
        sin_seed: seed of the fixed sine parameters ``alpha, beta`` (default 0).
    """
    if not -1.0 <= correlation <= 1.0:
        raise DataError(f"mmoe_synthetic correlation must be in [-1, 1], got {correlation}")
    if dim < 2:
        raise DataError(f"mmoe_synthetic dim must be >= 2, got {dim}")
    if rows < 1:
        raise DataError(f"mmoe_synthetic rows must be >= 1, got {rows}")
    param_rng, data_rng = (
        np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(seed).spawn(2)
    )
    sin_rng = np.random.default_rng(sin_seed)
    alpha = sin_rng.standard_normal(num_sin)
    beta = sin_rng.standard_normal(num_sin)

    u1 = param_rng.standard_normal(dim)
    u1 /= np.linalg.norm(u1)
    u2 = param_rng.standard_normal(dim)
    u2 -= (u2 @ u1) * u1  # Gram-Schmidt: u2 orthogonal to u1
    u2 /= np.linalg.norm(u2)
    p = float(correlation)
    w1 = scale * u1
    w2 = scale * (p * u1 + math.sqrt(max(0.0, 1.0 - p * p)) * u2)

    x = data_rng.standard_normal((rows, dim))
    eps = data_rng.standard_normal((rows, 2)) * noise_std
    z = x @ np.stack([w1, w2], axis=1)  # [N, d] x [d, 2] -> [N, 2]
    sines = np.sin(alpha[None, None, :] * z[:, :, None] + beta[None, None, :]).sum(-1)  # [N, 2]
    y = z + sines + eps
    params = {
        "correlation": p,
        "dim": dim,
        "scale": scale,
        "num_sin": num_sin,
        "noise_std": noise_std,
        "seed": seed,
        "sin_seed": sin_seed,
        "weight_cosine": float(w1 @ w2 / (np.linalg.norm(w1) * np.linalg.norm(w2))),
        "alpha": alpha.tolist(),
        "beta": beta.tolist(),
    }
    return x.astype(np.float32), y.astype(np.float32), params


def load_mmoe_synthetic(
    correlation: float = 0.5,
    rows: int = 100_000,
    dim: int = 100,
    seed: int = 0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    **kwargs: Any,
) -> Splits:
    """The MMoE synthetic data set as train / valid / test (contiguous row ranges).

    ``kwargs`` go to :func:`mmoe_synthetic_arrays` (``scale``, ``num_sin``,
    ``noise_std``, ``sin_seed``).
    """
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1):
        raise DataError("valid_fraction and test_fraction must be in [0, 1)")
    if valid_fraction + test_fraction >= 1:
        raise DataError("valid_fraction + test_fraction must be < 1")
    x, y, params = mmoe_synthetic_arrays(rows, correlation, dim, seed, **kwargs)
    n_valid, n_test = round(rows * valid_fraction), round(rows * test_fraction)
    n_train = rows - n_valid - n_test
    cut = [0, n_train, n_train + n_valid, rows]

    def part(k: int) -> TensorDataset:
        a, b = cut[k], cut[k + 1]
        return TensorDataset(
            torch.from_numpy(x[a:b]),
            torch.zeros(b - a, 0, dtype=torch.long),
            torch.from_numpy(y[a:b]),
        )

    schema = FeatureSchema(
        dense=tuple(f"x{i}" for i in range(dim)),
        categorical=(),
        cardinalities=(),
        tasks=(TaskSpec("task1", "regression"), TaskSpec("task2", "regression")),
    )
    label_corr = float(np.corrcoef(y[:, 0], y[:, 1])[0, 1]) if rows > 1 else float("nan")
    info = {"source": "mmoe_synthetic", **params, "label_correlation": label_corr}
    info |= {"valid_fraction": valid_fraction, "test_fraction": test_fraction}
    return Splits(f"mmoe_synthetic:p={correlation:g}", schema, part(0), part(1), part(2), info)
