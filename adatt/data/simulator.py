"""A short-video recommender simulator: the shape of the paper's private industrial data.

The AdaTT paper (section 4.2) evaluates on ~70B short-video examples with three
task groups. This module generates data with the same structure, any size,
deterministically, in chunks, so models can be compared where the paper's data
cannot be had.

World (built once from ``seed`` and the row count)
    * users ``u`` (``clip(rows / 10, 2_000, 2_000_000)``), items ``i``
      (``clip(rows / 25, 1_000, 1_000_000)``), authors (items / 20), 64 item
      categories, 40 countries; user, item, author, category and country
      popularity are Zipf-skewed (exponents 0.9, 1.05, 1.0, 1.0, 1.2), with a
      random permutation between popularity rank and ID.
    * latent preference vectors ``p_u, q_i`` in R^16 (unit variance per
      dimension): ``p_u`` mixes age-bucket and country factors (30 %) with an
      individual part; ``q_i`` mixes category (40 %), author (20 %) and
      individual parts. Scalar propensities: per user consumption ``c_u`` and
      engagement ``e_u`` (correlated), per item consumption and engagement
      quality, per author a follow appeal; per item a duration (log-normal,
      median 30 s, about 3 s to 5 min).

Rows (one impression of item ``i`` shown to user ``u``)
    12 categorical fields: user_id, item_id, author_id, item_category,
    user_country, user_age, user_gender, device, network, surface, hour,
    day_of_week (index 0 reserved for unknown, never generated). 21 dense
    features, standardised with the mean and standard deviation of the
    calibration sample (below), a fixed property of the world, so streamed
    chunks need no fitted scaler: user activity / tenure /
    historical consumption and engagement rates (noisy views of the
    propensities) / category affinity (noisy ``p_u . category factor``) / four
    upstream-embedding coordinates (noisy projections of ``p_u``), item
    popularity / log duration / log age / historical rates / four embedding
    coordinates of ``q_i``, author popularity, log feed position, and one
    pure-noise column.

Tasks (label = f(latent factors, context) + noise; labels are learnable from
the IDs, through embeddings, and partly from the dense features)
    Each task ``t`` has a preference score ``s_t = p_u^T M_t q_i`` with
    ``M_t = sqrt(shared) S + sqrt(family) G_family(t) + sqrt(1 - shared - family) R_t``
    where ``S``, ``G_consumption``, ``G_engagement`` and the ``R_t`` are
    orthonormal 16x16 matrices (Frobenius inner product). For independent
    standard ``p, q``, ``Var(s_t) = 1`` and ``corr(s_t, s_t') = shared +
    family * [same family]`` exactly (``dislike`` uses ``-S``: negatively
    correlated), so a preset's ``shared`` / ``family`` set the task correlation
    (over impressions, where a few popular items dominate, the realised score
    correlation is within about 0.1 of the design).
    Logits add propensities, item quality, context effects (feed position,
    local hour = hour + country time zone, surface, network, weekend) and
    nonlinear terms (``relu``, squares, products with duration and user
    activity); an intercept per task is solved (bisection on a 131,072-row
    calibration sample, from its own random stream) so the expected positive
    rate equals the designed one. Labels follow a cascade:

    ============ ============ ========================= =============================
    task         family       kind / designed rate      depends on
    ============ ============ ========================= =============================
    view         consumption  binary, 40 %              score, position, hour, surface
    finish       consumption  binary, 12 % (needs view)  score, duration
    replay       consumption  binary, 3 % (needs finish) score, short duration
    watch_time   consumption  regression, log1p(sec)    view, finish, replay, score
    like         engagement   binary, 3.5 %             relu(score), view
    comment      engagement   binary, 0.8 %             score^2, view, evening
    share        engagement   binary, 0.5 %             relu(score - 0.3), finish
    dislike      engagement   binary, 1 %               -shared score, not viewed
    follow       engagement   binary, 0.05 % (aux)      author appeal, like
    ============ ============ ========================= =============================

Presets (tasks listed regression first, then by decreasing positive rate, as
the paper reports them)
    * ``group1``: view (consumption) + like (engagement); low correlation
      (shared 0.1, family 0.2).
    * ``group2``: view + replay, two consumption tasks with higher correlation
      (shared 0.4, family 0.4); replay's rate (3 %) is like's (3.5 %).
    * ``group3``: watch_time (regression), view, finish, dislike, follow: three
      consumption tasks (one a regression) and two engagement tasks, one
      expressing dislike and one auxiliary with extremely sparse positives
      (the paper's "five diverse tasks"; shared 0.25, family 0.3).
    * ``all``: the nine tasks (shared 0.25, family 0.3).
    * ``partial``: watch_time, view, finish, like with partial labels of the
      shape of production logs: ``finish`` and ``watch_time`` observed only
      where ``view = 1`` (``condition: view``; finish given view, about 30 %
      positive), ``like`` observed on a random 30 % of the rows (``missing:
      mask``, as for an engagement surface that shows the button on some
      impressions only); unobserved labels are NaN, the true labels stay
      available (``observed=False``). Shared 0.25, family 0.3.

Determinism and streaming
    Row ``r`` belongs to block ``r // 32768``; each block draws from its own
    ``numpy`` PCG64 stream seeded by ``SeedSequence(seed, spawn_key=(1, block))``,
    so the data depend on ``(preset, rows, seed)`` only, never on the chunk
    size. :func:`iter_chunks` streams batches without holding the set in memory;
    :func:`load_sim` materialises train / valid / test as contiguous row ranges
    (rows are i.i.d., so this is a random split).

Example:
    >>> sim = Simulator("group1", rows=10_000, seed=0)
    >>> sim.schema.task_names, sim.schema.dense_dim, len(sim.schema.categorical)
    (['view', 'like'], 21, 12)
    >>> b = next(iter_chunks("group1", rows=10_000, seed=0, chunk_rows=4096))
    >>> tuple(b.dense.shape), tuple(b.cat.shape), tuple(b.labels.shape)
    ((4096, 21), (4096, 12), (4096, 2))
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from adatt.data.batch import Batch, TensorDataset
from adatt.data.errors import DataError
from adatt.data.schema import FeatureSchema, TaskSpec
from adatt.data.splits import Splits

__all__ = [
    "SimTask",
    "SimPreset",
    "TASKS",
    "PRESETS",
    "Simulator",
    "iter_chunks",
    "load_sim",
]

BLOCK_ROWS = 32_768
CALIBRATION_ROWS = 131_072
LATENT_DIM = 16
N_CATEGORIES = 64
N_COUNTRIES = 40
N_AGE = 8
N_GENDER = 3
N_DEVICE = 5
N_NETWORK = 3
N_SURFACE = 4
N_EMB = 4

Family = Literal["consumption", "engagement"]


@dataclass(frozen=True)
class SimTask:
    """One simulated task: name, kind, family, designed positive rate (binary only)."""

    name: str
    kind: Literal["binary", "regression"]
    family: Family
    rate: float | None
    auxiliary: bool = False


#: every task, in generation (cascade) order
TASKS: dict[str, SimTask] = {
    t.name: t
    for t in (
        SimTask("view", "binary", "consumption", 0.40),
        SimTask("finish", "binary", "consumption", 0.12),
        SimTask("replay", "binary", "consumption", 0.03),
        SimTask("watch_time", "regression", "consumption", None),
        SimTask("like", "binary", "engagement", 0.035),
        SimTask("comment", "binary", "engagement", 0.008),
        SimTask("share", "binary", "engagement", 0.005),
        SimTask("dislike", "binary", "engagement", 0.01),
        SimTask("follow", "binary", "engagement", 0.0005, auxiliary=True),
    )
}


@dataclass(frozen=True)
class SimPreset:
    """A task group: its tasks (label order) and how much their scores share.

    ``shared``: fraction of every task's preference-score variance from the
    factor common to all tasks; ``family``: fraction from the factor common to
    its family (consumption or engagement); the rest is task-specific.

    Partial labels (both empty by default: every label observed):
    ``conditions``: ``(task, condition)`` pairs, the task's label observed only
    where the binary ``condition`` task's label is 1 (``TaskSpec.condition``);
    ``observed``: ``(task, fraction)`` pairs, the task's label observed on a
    random ``fraction`` of the rows (``missing: mask``). Unobserved labels are
    NaN; the true labels stay available (``observed=False``).
    """

    name: str
    tasks: tuple[str, ...]
    shared: float
    family: float
    conditions: tuple[tuple[str, str], ...] = ()
    observed: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise DataError(f"preset {self.name!r}: unknown tasks {unknown}; known: {list(TASKS)}")
        if not (0 <= self.shared and 0 <= self.family and self.shared + self.family <= 1):
            raise DataError(
                f"preset {self.name!r}: need shared >= 0, family >= 0, shared + family <= 1"
            )
        for task, cond in self.conditions:
            if task not in self.tasks or cond not in self.tasks or TASKS[cond].kind != "binary":
                raise DataError(f"preset {self.name!r}: condition ({task!r}, {cond!r}) needs "
                                "two of its tasks, the condition binary")
        for task, frac in self.observed:
            if task not in self.tasks or not 0 < frac <= 1:
                raise DataError(f"preset {self.name!r}: observed ({task!r}, {frac!r}) needs "
                                "one of its tasks and a fraction in (0, 1]")

    @property
    def partial(self) -> bool:
        """True when some labels are unobserved (conditions or observed fractions)."""
        return bool(self.conditions or self.observed)


PRESETS: dict[str, SimPreset] = {
    p.name: p
    for p in (
        SimPreset("group1", ("view", "like"), shared=0.1, family=0.2),
        SimPreset("group2", ("view", "replay"), shared=0.4, family=0.4),
        SimPreset(
            "group3", ("watch_time", "view", "finish", "dislike", "follow"), shared=0.25, family=0.3
        ),
        SimPreset(
            "all",
            ("watch_time", "view", "finish", "like", "replay", "dislike", "comment", "share")
            + ("follow",),
            shared=0.25,
            family=0.3,
        ),
        SimPreset(
            "partial", ("watch_time", "view", "finish", "like"), shared=0.25, family=0.3,
            conditions=(("watch_time", "view"), ("finish", "view")), observed=(("like", 0.3),),
        ),
    )
}

CATEGORICAL = (
    "user_id",
    "item_id",
    "author_id",
    "item_category",
    "user_country",
    "user_age",
    "user_gender",
    "device",
    "network",
    "surface",
    "hour",
    "day_of_week",
)
DENSE = (
    "user_activity",
    "user_tenure",
    "user_hist_consumption",
    "user_hist_engagement",
    "user_category_affinity",
    *(f"user_emb_{k}" for k in range(N_EMB)),
    "item_popularity",
    "item_log_duration",
    "item_log_age",
    "item_hist_consumption",
    "item_hist_engagement",
    *(f"item_emb_{k}" for k in range(N_EMB)),
    "author_popularity",
    "log_position",
    "noise",
)


# --------------------------------------------------------------------------- helpers


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


class _Zipf:
    """Bounded continuous-Pareto ranks, floored: ``P(rank k) ~ k^-s``, sampled in O(1)."""

    def __init__(self, n: int, s: float, perm: np.ndarray):
        self.n, self.s, self.perm = n, s, perm  # perm[rank] = id (0-based)

    def sample(self, u: np.ndarray) -> np.ndarray:
        n, s = self.n, self.s
        if abs(s - 1.0) < 1e-9:
            x = np.exp(u * math.log(n + 1.0))
        else:
            a = (n + 1.0) ** (1.0 - s) - 1.0
            x = (1.0 + u * a) ** (1.0 / (1.0 - s))
        rank = np.minimum(x.astype(np.int64) - 1, n - 1)
        return self.perm[rank]

    def log_prob_by_id(self) -> np.ndarray:
        """``log P(id)`` per id ``[n]``."""
        k = np.arange(1, self.n + 2, dtype=np.float64)
        if abs(self.s - 1.0) < 1e-9:
            cdf = np.log(k) / math.log(self.n + 1.0)
        else:
            cdf = (k ** (1.0 - self.s) - 1.0) / ((self.n + 1.0) ** (1.0 - self.s) - 1.0)
        p_rank = np.diff(cdf)
        out = np.empty(self.n)
        out[self.perm] = np.log(p_rank)
        return out


def _standardise(x: np.ndarray) -> np.ndarray:
    return ((x - x.mean()) / (x.std() or 1.0)).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _draw(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
    """``n`` draws of a small categorical distribution given by its cumulative probabilities."""
    return np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(cdf) - 1)


def _solve_bias(z: np.ndarray, mask: np.ndarray | None, rate: float) -> float:
    """Intercept ``b`` with ``mean(mask * sigmoid(z + b)) = rate`` (bisection)."""
    lo, hi = -40.0, 40.0
    m = 1.0 if mask is None else mask
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if float(np.mean(m * _sigmoid(z + mid))) < rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------- simulator


class Simulator:
    """The simulated world of one ``(preset, rows, seed)``; generates any row range.

    Args:
        preset: a name in :data:`PRESETS` or a :class:`SimPreset`.
        rows: total rows of the data set (sets the world's entity counts).
        seed: the one seed every random draw derives from.
    """

    def __init__(self, preset: str | SimPreset = "group1", rows: int = 100_000, seed: int = 0):
        if isinstance(preset, str):
            if preset not in PRESETS:
                raise DataError(f"unknown simulator preset {preset!r}; known: {list(PRESETS)}")
            preset = PRESETS[preset]
        if rows < 1:
            raise DataError(f"simulator rows must be >= 1, got {rows}")
        self.preset, self.rows, self.seed = preset, int(rows), int(seed)
        self.n_users = int(np.clip(rows // 10, 2_000, 2_000_000))
        self.n_items = int(np.clip(rows // 25, 1_000, 1_000_000))
        self.n_authors = max(50, self.n_items // 20)
        self._build_world()
        self._calibrate()
        self.schema = FeatureSchema(
            dense=DENSE,
            categorical=CATEGORICAL,
            cardinalities=(
                self.n_users + 1,
                self.n_items + 1,
                self.n_authors + 1,
                N_CATEGORIES + 1,
                N_COUNTRIES + 1,
                N_AGE + 1,
                N_GENDER + 1,
                N_DEVICE + 1,
                N_NETWORK + 1,
                N_SURFACE + 1,
                24 + 1,
                7 + 1,
            ),
            tasks=tuple(self._task_spec(t) for t in preset.tasks),
        )

    def _task_spec(self, task: str) -> TaskSpec:
        """The schema's task: its kind, and how its labels are observed (partial presets)."""
        if not self.preset.partial:
            return TaskSpec(task, TASKS[task].kind)
        cond = dict(self.preset.conditions).get(task)
        missing = "mask" if task in dict(self.preset.observed) else "error"
        return TaskSpec(task, TASKS[task].kind, missing=missing, condition=cond)

    # ---- world ------------------------------------------------------------------------
    def _build_world(self) -> None:
        rng = _rng(self.seed, 0)
        K = LATENT_DIM
        nu, ni, na = self.n_users, self.n_items, self.n_authors
        f32 = np.float32

        # task matrices: orthonormal in Frobenius inner product
        names = list(TASKS)
        q, _ = np.linalg.qr(rng.standard_normal((K * K, 3 + len(names))))
        basis = q.T.reshape(-1, K, K)  # [3 + T, K, K], each ||.||_F = 1, mutually orthogonal
        S, G = basis[0], {"consumption": basis[1], "engagement": basis[2]}
        sh, fa = self.preset.shared, self.preset.family
        own = math.sqrt(max(0.0, 1.0 - sh - fa))
        self.M = {}
        for j, t in enumerate(names):
            sign = -1.0 if t == "dislike" else 1.0
            m = sign * math.sqrt(sh) * S + math.sqrt(fa) * G[TASKS[t].family] + own * basis[3 + j]
            self.M[t] = m.astype(f32)
        self._M_all = np.concatenate([self.M[t] for t in names], axis=1)  # [K, T*K]

        # popularity samplers
        self.user_zipf = _Zipf(nu, 0.9, rng.permutation(nu))
        self.item_zipf = _Zipf(ni, 1.05, rng.permutation(ni))
        author_zipf = _Zipf(na, 1.0, rng.permutation(na))
        cat_zipf = _Zipf(N_CATEGORIES, 1.0, rng.permutation(N_CATEGORIES))
        country_zipf = _Zipf(N_COUNTRIES, 1.2, rng.permutation(N_COUNTRIES))

        # users
        self.u_country = country_zipf.sample(rng.random(nu))
        self.u_age = rng.choice(N_AGE, size=nu, p=[0.08, 0.22, 0.24, 0.17, 0.12, 0.08, 0.06, 0.03])
        self.u_gender = rng.choice(N_GENDER, size=nu, p=[0.48, 0.48, 0.04])
        self.u_device = rng.integers(0, N_DEVICE, size=nu)
        e_age = rng.standard_normal((N_AGE, K))
        e_country = rng.standard_normal((N_COUNTRIES, K))
        self.p = (
            math.sqrt(0.15) * e_age[self.u_age]
            + math.sqrt(0.15) * e_country[self.u_country]
            + math.sqrt(0.70) * rng.standard_normal((nu, K))
        ).astype(f32)
        u_act = _standardise(self.user_zipf.log_prob_by_id())
        self.u_tenure = rng.standard_normal(nu).astype(f32)
        self.u_cons = (0.3 * u_act + math.sqrt(0.91) * rng.standard_normal(nu)).astype(f32)
        self.u_eng = (
            0.3 * self.u_cons + 0.2 * self.u_tenure + math.sqrt(0.87) * rng.standard_normal(nu)
        ).astype(f32)
        self.tz = rng.integers(-11, 13, size=N_COUNTRIES)
        self.u_age_eff = rng.normal(0, 0.3, size=N_AGE)  # age effect on engagement

        # items
        self.i_cat = cat_zipf.sample(rng.random(ni))
        self.i_author = author_zipf.sample(rng.random(ni))
        e_cat = rng.standard_normal((N_CATEGORIES, K))
        e_author = rng.standard_normal((na, K))
        self.q = (
            math.sqrt(0.4) * e_cat[self.i_cat]
            + math.sqrt(0.2) * e_author[self.i_author]
            + math.sqrt(0.4) * rng.standard_normal((ni, K))
        ).astype(f32)
        self.e_cat = e_cat.astype(f32)
        self.i_cons = rng.standard_normal(ni).astype(f32)
        self.i_eng = (0.5 * self.i_cons + math.sqrt(0.75) * rng.standard_normal(ni)).astype(f32)
        cat_dur = rng.normal(0, 0.5, size=N_CATEGORIES)
        self.i_logdur = np.clip(
            (cat_dur[self.i_cat] + math.sqrt(0.75) * rng.standard_normal(ni)) / 1.0, -2.5, 2.5
        ).astype(f32)  # about standard; seconds = 30 * exp(0.9 * logdur)
        self.i_upload = rng.exponential(1.0, size=ni).astype(f32)  # item age scale (x30 days)
        self.a_appeal = rng.standard_normal(na).astype(f32)
        self.i_pop = _standardise(self.item_zipf.log_prob_by_id())
        self.a_pop = _standardise(author_zipf.log_prob_by_id())

        # observed noisy views of latents (fixed per entity, like logged history)
        proj_u = rng.standard_normal((K, N_EMB)) / math.sqrt(K)
        proj_i = rng.standard_normal((K, N_EMB)) / math.sqrt(K)
        self.u_emb = (self.p @ proj_u + 0.5 * rng.standard_normal((nu, N_EMB))).astype(f32)
        self.i_emb = (self.q @ proj_i + 0.5 * rng.standard_normal((ni, N_EMB))).astype(f32)
        self.u_emb /= self.u_emb.std(0, keepdims=True)
        self.i_emb /= self.i_emb.std(0, keepdims=True)
        self.u_hist_cons = _standardise(self.u_cons + 0.6 * rng.standard_normal(nu))
        self.u_hist_eng = _standardise(self.u_eng + 0.6 * rng.standard_normal(nu))
        self.i_hist_cons = _standardise(self.i_cons + 0.6 * rng.standard_normal(ni))
        self.i_hist_eng = _standardise(self.i_eng + 0.6 * rng.standard_normal(ni))
        self.u_act = u_act

        # context effects
        self.hour_p = np.array(
            [2, 1.5, 1, 0.8, 0.7, 0.8, 1.2, 2, 2.5, 2.5, 2.6, 3, 3.5, 3.2, 3, 3, 3.2, 3.6]
            + [4.2, 5, 5.5, 5.4, 4.6, 3.2]
        )
        self.hour_cdf = np.cumsum(self.hour_p / self.hour_p.sum())
        self.surface_cdf = np.cumsum([0.7, 0.15, 0.1, 0.05])
        self.network_cdf = np.cumsum([0.6, 0.32, 0.08])
        self.surface_eff = {t: rng.normal(0, 0.3, size=N_SURFACE) for t in names}
        self.network_eff = np.array([0.0, -0.1, -0.5])
        self.biases: dict[str, float] = {}
        self.dense_loc: np.ndarray | None = None
        self.dense_scale: np.ndarray | None = None

    # ---- rows -------------------------------------------------------------------------
    def _features(self, rng: np.random.Generator, n: int) -> dict[str, Any]:
        """Draw ``n`` impressions: ids, context and the dense features."""
        u = self.user_zipf.sample(rng.random(n))
        i = self.item_zipf.sample(rng.random(n))
        hour = _draw(rng, self.hour_cdf, n)
        dow = rng.integers(0, 7, size=n)
        own_device = rng.random(n) < 0.85
        device = np.where(own_device, self.u_device[u], rng.integers(0, N_DEVICE, size=n))
        network = _draw(rng, self.network_cdf, n)
        surface = _draw(rng, self.surface_cdf, n)
        position = rng.geometric(0.12, size=n)
        item_age = self.i_upload[i] * rng.exponential(1.0, size=n).astype(np.float32)
        noise = rng.standard_normal(n).astype(np.float32)
        aff_noise = rng.standard_normal(n).astype(np.float32)

        country = self.u_country[u]
        cat = self.i_cat[i]
        author = self.i_author[i]
        affinity = (self.p[u] * self.e_cat[cat]).sum(1) / math.sqrt(LATENT_DIM)
        log_pos = (np.log1p(position) - 2.0) / 0.8
        log_age = (np.log1p(30.0 * item_age) - 2.7) / 1.2
        dense = np.empty((n, len(DENSE)), dtype=np.float32)
        cols = [
            self.u_act[u],
            self.u_tenure[u],
            self.u_hist_cons[u],
            self.u_hist_eng[u],
            (affinity + 0.7 * aff_noise) / 1.2,
            *(self.u_emb[u, k] for k in range(N_EMB)),
            self.i_pop[i],
            self.i_logdur[i],
            log_age,
            self.i_hist_cons[i],
            self.i_hist_eng[i],
            *(self.i_emb[i, k] for k in range(N_EMB)),
            self.a_pop[author],
            log_pos,
            noise,
        ]
        for j, c in enumerate(cols):
            dense[:, j] = c
        if self.dense_loc is not None:
            dense -= self.dense_loc
            dense /= self.dense_scale
        catm = np.stack(
            [
                u,
                i,
                author,
                cat,
                country,
                self.u_age[u],
                self.u_gender[u],
                device,
                network,
                surface,
                hour,
                dow,
            ],
            axis=1,
        ).astype(np.int64)
        catm += 1  # index 0 is reserved for unknown
        local_hour = (hour + self.tz[country]) % 24
        return {
            "u": u,
            "i": i,
            "author": author,
            "dense": dense,
            "cat": catm,
            "evening": np.cos(2 * math.pi * (local_hour - 21) / 24).astype(np.float32),
            "weekend": (dow >= 5).astype(np.float32),
            "surface": surface,
            "network": network,
            "log_pos": log_pos.astype(np.float32),
            "log_age": log_age.astype(np.float32),
        }

    def _labels(
        self,
        f: dict[str, Any],
        rng: np.random.Generator,
        calibrate: bool = False,
        probs: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """Sample every task's label in cascade order.

        ``calibrate`` solves the intercepts; ``probs``, when given, receives each
        binary task's probability given the features and the sampled parent labels.
        """
        u, i, n = f["u"], f["i"], f["u"].shape[0]
        p, q = self.p[u], self.q[i]  # [n, K] each
        pm = (p @ self._M_all).reshape(n, len(self.M), LATENT_DIM)  # [n,K]x[K,T*K] -> [n,T,K]
        scores = np.einsum("ntk,nk->nt", pm, q)  # [n,T,K] . [n,K] -> [n,T]
        s = {t: scores[:, j] for j, t in enumerate(self.M)}  # p_u^T M_t q_i per task
        cu, eu = self.u_cons[u], self.u_eng[u] + self.u_age_eff[self.u_age[u]]
        ci, ei = self.i_cons[i], self.i_eng[i]
        ld = self.i_logdur[i]
        ev, wk, lp = f["evening"], f["weekend"], f["log_pos"]
        net = self.network_eff[f["network"]]

        def surf(t: str) -> np.ndarray:
            return self.surface_eff[t][f["surface"]]

        draws = {t: rng.random(n) for t in TASKS}  # fixed order of draws per block
        wt_noise = rng.standard_normal(n)
        skim = rng.uniform(0.3, 3.0, size=n)
        out: dict[str, np.ndarray] = {}

        def bern(t: str, z: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
            if calibrate:
                self.biases[t] = _solve_bias(z, mask, TASKS[t].rate)  # type: ignore[arg-type]
            prob = _sigmoid(z + self.biases[t])
            if mask is not None:
                prob = prob * mask
            if probs is not None:
                probs[t] = prob
            return (draws[t] < prob).astype(np.float32)

        sv = s["view"]
        out["view"] = bern(
            "view",
            1.0 * sv + 0.4 * sv * cu + 0.6 * cu + 0.5 * ci - 0.35 * lp + 0.25 * ev
            + 0.15 * wk + net + surf("view") - 0.2 * f["log_age"],
        )  # fmt: skip
        sf = s["finish"]
        out["finish"] = bern(
            "finish",
            0.9 * sf + 0.5 * sf * _relu(ld) + 0.4 * cu + 0.5 * ci - 0.9 * ld + 0.5 * net,
            mask=out["view"],
        )
        out["replay"] = bern(
            "replay",
            1.0 * s["replay"] + 0.5 * cu - 0.7 * ld + 0.3 * ev + 0.3 * _relu(s["replay"]) ** 2,
            mask=out["finish"],
        )
        # watch time: seconds watched; skims when not viewed, full (x2 on replay) when finished
        duration = 30.0 * np.exp(0.9 * ld)
        frac = 0.95 * _sigmoid(
            0.8 * s["watch_time"] + 0.3 * cu + 0.3 * ci - 0.3 * ld + 0.5 * net + 0.5 * wt_noise
        )
        seconds = np.where(out["view"] > 0, duration * frac, np.minimum(duration, skim))
        seconds = np.where(out["finish"] > 0, duration * (1.0 + out["replay"]), seconds)
        out["watch_time"] = np.log1p(seconds).astype(np.float32)

        sl = s["like"]
        out["like"] = bern(
            "like",
            1.2 * _relu(sl) + 0.4 * sl + 0.7 * eu + 0.5 * ei + 1.2 * out["view"] + surf("like"),
        )
        sc = s["comment"]
        out["comment"] = bern(
            "comment",
            0.6 * sc**2 + 0.3 * sc + 0.8 * eu + 0.4 * ei + 1.0 * out["view"] + 0.3 * ev
            + surf("comment"),
        )  # fmt: skip
        out["share"] = bern(
            "share",
            1.4 * _relu(s["share"] - 0.3) + 0.5 * eu + 0.6 * ei + 1.0 * out["finish"]
            + 0.3 * out["view"] + surf("share"),
        )  # fmt: skip
        out["dislike"] = bern(
            "dislike",
            1.0 * s["dislike"] - 0.5 * ci + 0.3 * eu + 0.8 * (1.0 - out["view"])
            + 0.3 * _relu(ld) + surf("dislike"),
        )  # fmt: skip
        out["follow"] = bern(
            "follow",
            0.8 * s["follow"] + 0.8 * eu + 0.8 * self.a_appeal[f["author"]] + 1.0 * out["like"],
        )
        return out

    def _calibrate(self) -> None:
        """Dense-feature standardisation and task intercepts, from the calibration sample."""
        rng = _rng(self.seed, 2)
        self.dense_loc = self.dense_scale = None
        f = self._features(rng, CALIBRATION_ROWS)
        self.dense_loc = f["dense"].mean(0)
        self.dense_scale = f["dense"].std(0) + np.float32(1e-6)
        self._labels(f, rng, calibrate=True)

    def _block(self, b: int, observed: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        start = b * BLOCK_ROWS
        n = min(BLOCK_ROWS, self.rows - start)
        rng = _rng(self.seed, 1, b)
        f = self._features(rng, n)
        lab = self._labels(f, rng)
        labels = np.stack([lab[t] for t in self.preset.tasks], axis=1).astype(np.float32)
        if observed and self.preset.partial:
            labels = self._observe(b, labels)
        return f["dense"], f["cat"], labels

    def _observe(self, b: int, labels: np.ndarray) -> np.ndarray:
        """Block ``b``'s observed labels ``[n, T]``: NaN where a label is unobserved. The
        observation draws come from their own stream (``spawn_key=(3, b)``), so the true
        labels are those of ``observed=False``."""
        col = {t: j for j, t in enumerate(self.preset.tasks)}
        out = labels.copy()
        if self.preset.observed:
            u = _rng(self.seed, 3, b).random((labels.shape[0], len(self.preset.observed)))
            for k, (task, frac) in enumerate(self.preset.observed):
                out[u[:, k] >= frac, col[task]] = np.nan
        for task, cond in self.preset.conditions:
            out[~(out[:, col[cond]] == 1), col[task]] = np.nan  # NaN condition: unobserved
        return out

    def arrays(self, start: int = 0, stop: int | None = None,
               observed: bool = True) -> tuple[np.ndarray, ...]:
        """Rows ``[start, stop)`` as ``dense [n, 21]``, ``cat [n, 12]``, ``labels [n, T]``
        (``observed=False``: a partial preset's true labels, no NaN)."""
        parts = list(self._iter_arrays(start, stop, chunk_rows=BLOCK_ROWS, observed=observed))
        if not parts:
            T = len(self.preset.tasks)
            return (
                np.zeros((0, len(DENSE)), np.float32),
                np.zeros((0, len(CATEGORICAL)), np.int64),
                np.zeros((0, T), np.float32),
            )
        return tuple(np.concatenate(c) for c in zip(*parts, strict=True))

    def _iter_arrays(
        self, start: int, stop: int | None, chunk_rows: int, observed: bool = True
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        stop = self.rows if stop is None else min(stop, self.rows)
        if not 0 <= start <= stop:
            raise DataError(f"row range [{start}, {stop}) is not within [0, {self.rows})")
        if chunk_rows < 1:
            raise DataError(f"chunk_rows must be >= 1, got {chunk_rows}")
        buf: list[tuple[np.ndarray, ...]] = []
        buffered = 0
        b = start // BLOCK_ROWS
        offset = start - b * BLOCK_ROWS
        pos = start
        while pos < stop or buffered:
            while buffered < chunk_rows and pos < stop:
                d, c, y = self._block(b, observed)
                take = min(d.shape[0] - offset, stop - pos)
                buf.append(
                    (
                        d[offset : offset + take],
                        c[offset : offset + take],
                        y[offset : offset + take],
                    )
                )
                buffered += take
                pos += take
                b, offset = b + 1, 0
            parts = (
                [np.concatenate(x) for x in zip(*buf, strict=True)]
                if len(buf) > 1
                else list(buf[0])
            )
            yield tuple(x[:chunk_rows] for x in parts)  # type: ignore[misc]
            rest = parts[0].shape[0] - chunk_rows
            buf = [tuple(x[chunk_rows:] for x in parts)] if rest > 0 else []
            buffered = max(rest, 0)

    def chunks(
        self, chunk_rows: int = 65_536, start: int = 0, stop: int | None = None
    ) -> Iterator[Batch]:
        """Batches of ``chunk_rows`` rows (the last may be shorter) over ``[start, stop)``."""
        for d, c, y in self._iter_arrays(start, stop, chunk_rows):
            yield Batch(torch.from_numpy(d), torch.from_numpy(c), torch.from_numpy(y))

    def info(self) -> dict[str, Any]:
        """Facts about the world (JSON-serialisable)."""
        return {
            "source": "sim",
            "preset": self.preset.name,
            "rows": self.rows,
            "seed": self.seed,
            "shared": self.preset.shared,
            "family": self.preset.family,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_authors": self.n_authors,
            "designed_rates": {t: TASKS[t].rate for t in self.preset.tasks},
            "auxiliary_tasks": [t for t in self.preset.tasks if TASKS[t].auxiliary],
            "intercepts": {t: round(b, 6) for t, b in self.biases.items()},
        } | ({"conditions": dict(self.preset.conditions), "observed": dict(self.preset.observed)}
             if self.preset.partial else {})


def iter_chunks(
    preset: str | SimPreset = "group1",
    rows: int = 100_000,
    seed: int = 0,
    chunk_rows: int = 65_536,
    *,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[Batch]:
    """Stream rows ``[start, stop)`` of the simulated data set as :class:`Batch` chunks.

    Same ``(preset, rows, seed)``, same rows, whatever ``chunk_rows``. Only one
    32,768-row block plus one chunk is in memory at a time (besides the world).
    Each batch: ``dense [n, 21]``, ``cat [n, 12]``, ``labels [n, T]``, no weight.
    """
    yield from Simulator(preset, rows, seed).chunks(chunk_rows, start, stop)


def load_sim(
    preset: str | SimPreset = "group1",
    rows: int = 100_000,
    seed: int = 0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    observed: bool = True,
) -> Splits:
    """Materialise the simulated data set as train / valid / test.

    ``observed=False``: a partial preset's true labels (no NaN), with its schema.

    Rows ``[0, n_train)`` are train, then ``n_valid`` rows of validation, then
    test, with ``n_valid = round(rows * valid_fraction)`` and
    ``n_test = round(rows * test_fraction)``.
    """
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1):
        raise DataError("valid_fraction and test_fraction must be in [0, 1)")
    if valid_fraction + test_fraction >= 1:
        raise DataError("valid_fraction + test_fraction must be < 1")
    sim = Simulator(preset, rows, seed)
    n_valid = round(rows * valid_fraction)
    n_test = round(rows * test_fraction)
    n_train = rows - n_valid - n_test
    bounds = {"train": (0, n_train), "valid": (n_train, n_train + n_valid)}
    bounds["test"] = (n_train + n_valid, rows)
    sets = {}
    for split, (a, b) in bounds.items():
        d, c, y = sim.arrays(a, b, observed=observed)
        sets[split] = TensorDataset(torch.from_numpy(d), torch.from_numpy(c), torch.from_numpy(y))
    info = sim.info() | {"valid_fraction": valid_fraction, "test_fraction": test_fraction}
    return Splits(
        f"sim:{sim.preset.name}", sim.schema, sets["train"], sets["valid"], sets["test"], info
    )
