"""Models built from fusion levels: AdaTT-sp, AdaTT, PLE/CGC, MMoE, ML-MMoE.

Notation: B batch, T tasks, L levels, E experts of a level, G units of a level.

All five are a stack of :class:`~adatt.modules.fusion.FusionLevel` whose
wiring (:class:`~adatt.modules.fusion.LevelPlan`) encodes the paper's
semantics, on top of one :class:`~adatt.modules.layers.InputLinear` that
computes, in a single product, the first layer of every expert and gate that
reads the raw input, followed by :class:`~adatt.modules.towers.TowerBank`.

* AdaTT-sp (Li et al., KDD'23, https://arxiv.org/abs/2304.04959, Eq. 1-11):
  units = tasks; task t's experts and gate read task t's previous output;
  each gate weighs all experts; NativeExpertLF ``v_t`` on its own experts.
* AdaTT (general): plus one shared unit with ``m_s`` experts; the shared unit
  gates all experts with its own NativeExpertLF except at the last level,
  where it only supplies experts.

NativeExpertLF weights follow the authors' code (``native_rule="authors"``,
the default): ``v`` is fixed to 1 only when *every* unit (the shared one
included) has exactly one expert; otherwise every unit, single-expert units
included, learns its ``v``, drawn from U(-1/sqrt(m_u), 1/sqrt(m_u)).
``native_rule="per_unit"`` is the earlier reading of the paper, which fixes
``v`` to 1 per unit with ``m_u = 1`` and learns it for the others; the two
differ only when the units' expert counts are mixed (e.g. AdaTT with
``m_t = 1, m_s = 3``).
* PLE (Tang et al., RecSys'20; CGC with one level): task gates weigh their own
  plus the shared experts, the shared gate weighs all, none at the last level.
* MMoE (Ma et al., KDD'18) and ML-MMoE: ``n`` experts per level; every gate
  reads the raw input; level l's gates (n of them, T at the last level) make
  the inputs of level l+1's experts.

Example:
    >>> import torch
    >>> m = AdaTT(num_tasks=2, dense_dim=3, expert_sizes=[16, 8], experts_per_task=2,
    ...           shared_experts=1)
    >>> m(torch.randn(4, 3), torch.zeros(4, 0, dtype=torch.long)).shape
    torch.Size([4, 2])
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from adatt.models.base import MultiTaskModel, level_sizes, per_task_counts
from adatt.models.registry import register_model
from adatt.modules.fusion import FusionLevel, Gate, LevelPlan
from adatt.modules.kernels import drop_pad
from adatt.modules.layers import InputLinear
from adatt.modules.towers import TowerBank

__all__ = ["FusedExpertModel", "AdaTTSp", "AdaTT", "PLE", "MMoE", "MLMMoE", "NATIVE_RULES",
           "native_learned"]

NATIVE_RULES = ("authors", "per_unit")


class FusedExpertModel(MultiTaskModel):
    """Input product, fusion levels built from ``plans``, towers.

    Args:
        plans: one :class:`LevelPlan` per level; the last level has T gates.
        num_tasks, dense_dim, cat_cardinalities, embedding_dim: the input.
        multi_valued: per multi-valued feature ``(cardinality, pooling, max_length)``
            (from the data; see :class:`~adatt.modules.layers.InputLinear`).
        expert_sizes: per level, every expert's MLP widths.
        gate_hidden: hidden widths of every gate.
        tower_sizes: hidden widths of every task tower.
        activation: activation name.
    """

    def __init__(
        self,
        plans: Sequence[LevelPlan],
        num_tasks: int,
        dense_dim: int,
        cat_cardinalities: Sequence[int],
        embedding_dim: int | None,
        expert_sizes: Sequence[int | Sequence[int]],
        gate_hidden: Sequence[int],
        tower_sizes: Sequence[int],
        activation: str,
        multi_valued: Sequence[tuple[int, str, int]] = (),
    ) -> None:
        super().__init__()
        sizes = level_sizes(expert_sizes)
        if len(plans) != len(sizes):
            raise ValueError("one plan per level")
        if len(plans[-1].gates) != num_tasks:
            raise ValueError("the last level must have one unit per task")
        self.num_tasks = num_tasks
        levels, in_dim = [], None
        for i, (plan, s) in enumerate(zip(plans, sizes, strict=True)):
            levels.append(
                FusionLevel(plan, in_dim or 0, s, gate_hidden, activation, first_external=i == 0)
            )
            in_dim = s[-1]
        self.levels = nn.ModuleList(levels)
        # x-consumers: level 0's experts and gates, then later levels' external gates
        self.split = [levels[0].first_width] + [lv.external_width for lv in levels[1:]]
        self.input = InputLinear(dense_dim, cat_cardinalities, embedding_dim, sum(self.split),
                                 multi_valued)
        self.towers = TowerBank(num_tasks, sizes[-1][-1], tower_sizes, activation)

    def _forward(self, dense: Tensor, cat: Tensor, want_weights: bool) -> tuple[Tensor, list]:
        z = self.input.forward_padded(dense, cat)  # [B, N + pad]
        return self.forward_from_input(z, want_weights, width=sum(self.split))

    def forward_from_input(self, z: Tensor, want_weights: bool = False,
                           width: int | None = None) -> tuple[Tensor, list]:
        """``width``: only the first ``width`` columns of ``z`` are the input product;
        the rest are zero padding (:meth:`InputLinear.forward_padded`), which level 0
        reads as it is where it alone reads ``z``."""
        if any(self.split[1:]):  # later levels' external gates read columns of z too
            if width is not None and width != z.shape[1]:
                z = drop_pad(z, width)  # [B,N+pad] -> [B,N]
            width = None
            parts = z.split(self.split, dim=1)
        else:  # no split: its backward would concatenate the whole gradient with nothing
            parts = (z, *[None] * (len(self.split) - 1))
        weights = []
        h = z
        for i, (level, pre) in enumerate(zip(self.levels, parts, strict=True)):
            gate_pre = pre if level.plan.external_gates else None
            x = pre if i == 0 else h  # level 0 takes its pre-activations, later ones [B,G,d]
            w0 = width if i == 0 else None
            if want_weights:
                h, w = level(x, gate_pre, return_weights=True, width=w0)
                weights.append(w)
            else:
                h = level(x, gate_pre, width=w0)
        return self.towers(h), weights


def _owners(counts: Sequence[int]) -> list[int]:
    return [u for u, m in enumerate(counts) for _ in range(m)]


def _ranges(counts: Sequence[int]) -> list[tuple[int, ...]]:
    out, off = [], 0
    for m in counts:
        out.append(tuple(range(off, off + m)))
        off += m
    return out


def native_learned(counts: Sequence[int], rule: str = "authors") -> list[bool]:
    """Per unit: is its NativeExpertLF weight ``v`` learned (True) or fixed to 1?

    ``counts`` are the units' expert counts (tasks first, then the shared unit
    if any). ``rule="authors"``: fixed only when every count is 1, else all
    learned (the authors' ``AdaTTWSharedExps`` / ``AdaTTSp``); ``"per_unit"``:
    learned exactly for the units with more than one expert.

    >>> native_learned([1, 1, 3]), native_learned([1, 1, 3], "per_unit")
    ([True, True, True], [False, False, True])
    >>> native_learned([1, 1], "authors")
    [False, False]
    """
    if rule not in NATIVE_RULES:
        raise ValueError(f"native_rule must be one of {', '.join(NATIVE_RULES)}, got {rule!r}")
    if rule == "authors":
        return [any(c != 1 for c in counts)] * len(counts)
    return [c > 1 for c in counts]


@register_model
class AdaTTSp(FusedExpertModel):
    """AdaTT-sp: task-specific fusion units only (Li et al., KDD'23, Eq. 1-11).

    Args:
        num_tasks: T.
        dense_dim: width of the dense input.
        cat_cardinalities: cardinality of each categorical field.
        embedding_dim: None: categorical fields act as one-hot columns; else
            learned embeddings of this size.
        expert_sizes: per fusion level, the expert MLP widths (int = 1 layer).
        experts_per_task: ``m_t``, an int or one count per task.
        gate_hidden: hidden widths of the gates (default: 1-layer softmax).
        tower_sizes: task tower hidden widths.
        activation: activation name.
        native_fusion: NativeExpertLF on (paper) or off (Table 6 ablation).
        native_rule: which units learn their NativeExpertLF weight ``v``:
            ``"authors"`` (default, the authors' code: all of them unless every
            unit has one expert, then none) or ``"per_unit"`` (the earlier
            reading: the units with ``m_t > 1``). The same for equal counts.
    """

    name = "adatt_sp"
    description = "AdaTT-sp: task-specific units, gated fusion of all experts + NativeExpertLF"

    def __init__(
        self,
        num_tasks: int,
        dense_dim: int = 0,
        cat_cardinalities: Sequence[int] = (),
        embedding_dim: int | None = None,
        expert_sizes: Sequence[int | Sequence[int]] = (128, 64),
        experts_per_task: int | Sequence[int] = 2,
        gate_hidden: Sequence[int] = (),
        tower_sizes: Sequence[int] = (32,),
        activation: str = "relu",
        native_fusion: bool = True,
        native_rule: str = "authors",
        multi_valued: Sequence[tuple[int, str, int]] = (),
    ) -> None:
        m = per_task_counts(experts_per_task, num_tasks, "experts_per_task")
        learned = native_learned(m, native_rule)
        own, E = _ranges(m), sum(m)
        plans = []
        for lvl in range(len(level_sizes(expert_sizes))):
            first = lvl == 0
            gates = tuple(
                Gate(
                    0 if first else t,
                    tuple(range(E)),
                    own[t] if native_fusion else (),
                    native_learned=learned[t],
                )
                for t in range(num_tasks)
            )
            src = (0,) * E if first else tuple(_owners(m))
            plans.append(LevelPlan(1 if first else num_tasks, src, gates))
        self.experts_per_task, self.native_fusion = m, native_fusion
        self.native_rule = native_rule
        super().__init__(plans, num_tasks, dense_dim, cat_cardinalities, embedding_dim,
                         expert_sizes, gate_hidden, tower_sizes, activation, multi_valued)


def _with_shared_unit_plans(
    num_tasks: int, m: list[int], m_s: int, num_levels: int, ple: bool, native_fusion: bool,
    native_rule: str = "authors",
) -> list[LevelPlan]:
    # with no shared experts the shared unit would fuse into nothing: it is left out
    counts = [*m, m_s] if m_s else list(m)
    learned = native_learned(counts, native_rule)
    own, E, T = _ranges(counts), sum(counts), num_tasks
    shared = own[T] if m_s else ()
    U = len(counts)
    plans = []
    for lvl in range(num_levels):
        first, last = lvl == 0, lvl == num_levels - 1
        units = range(T) if last else range(U)
        gates = []
        for u in units:
            src = 0 if first else u
            if ple:
                experts = tuple(range(E)) if u == T else own[u] + shared
                gates.append(Gate(src, experts))
            else:
                native = own[u] if native_fusion else ()
                gates.append(Gate(src, tuple(range(E)), native, native_learned=learned[u]))
        src = (0,) * E if first else tuple(_owners(counts))
        plans.append(LevelPlan(1 if first else U, src, tuple(gates)))
    return plans


@register_model
class AdaTT(FusedExpertModel):
    """General AdaTT: task units plus a shared fusion unit (Li et al., KDD'23, Sec. 3.3).

    Args: as :class:`AdaTTSp`, plus ``shared_experts`` (``m_s`` >= 0; with 0 there is
    no shared unit and the model is AdaTT-sp). ``native_rule`` counts the shared
    unit: with the default ``"authors"`` and ``m_t = 1, m_s = 3`` every unit learns
    its ``v``; ``"per_unit"`` fixes the task units' ``v`` to 1.
    """

    name = "adatt"
    description = "AdaTT: task units + a shared fusion unit that gates all experts"

    def __init__(
        self,
        num_tasks: int,
        dense_dim: int = 0,
        cat_cardinalities: Sequence[int] = (),
        embedding_dim: int | None = None,
        expert_sizes: Sequence[int | Sequence[int]] = (128, 64),
        experts_per_task: int | Sequence[int] = 1,
        shared_experts: int = 3,
        gate_hidden: Sequence[int] = (),
        tower_sizes: Sequence[int] = (32,),
        activation: str = "relu",
        native_fusion: bool = True,
        native_rule: str = "authors",
        multi_valued: Sequence[tuple[int, str, int]] = (),
    ) -> None:
        m = per_task_counts(experts_per_task, num_tasks, "experts_per_task")
        if shared_experts < 0:
            raise ValueError("shared_experts must be >= 0")
        L = len(level_sizes(expert_sizes))
        plans = _with_shared_unit_plans(num_tasks, m, shared_experts, L, False, native_fusion,
                                        native_rule)
        self.experts_per_task, self.shared_experts = m, shared_experts
        self.native_fusion, self.native_rule = native_fusion, native_rule
        super().__init__(plans, num_tasks, dense_dim, cat_cardinalities, embedding_dim,
                         expert_sizes, gate_hidden, tower_sizes, activation, multi_valued)


@register_model
class PLE(FusedExpertModel):
    """PLE (Tang et al., RecSys'20); CGC when it has one level.

    Args: as :class:`AdaTT` without ``native_fusion`` (``shared_experts=0``: task
    experts only, no shared unit).
    """

    name = "ple"
    description = "PLE / CGC: task gates over own + shared experts, shared gate over all"

    def __init__(
        self,
        num_tasks: int,
        dense_dim: int = 0,
        cat_cardinalities: Sequence[int] = (),
        embedding_dim: int | None = None,
        expert_sizes: Sequence[int | Sequence[int]] = (128, 64),
        experts_per_task: int | Sequence[int] = 1,
        shared_experts: int = 3,
        gate_hidden: Sequence[int] = (),
        tower_sizes: Sequence[int] = (32,),
        activation: str = "relu",
        multi_valued: Sequence[tuple[int, str, int]] = (),
    ) -> None:
        m = per_task_counts(experts_per_task, num_tasks, "experts_per_task")
        if shared_experts < 0:
            raise ValueError("shared_experts must be >= 0")
        L = len(level_sizes(expert_sizes))
        plans = _with_shared_unit_plans(num_tasks, m, shared_experts, L, True, False)
        self.experts_per_task, self.shared_experts = m, shared_experts
        super().__init__(plans, num_tasks, dense_dim, cat_cardinalities, embedding_dim,
                         expert_sizes, gate_hidden, tower_sizes, activation, multi_valued)


def _mmoe_plans(num_tasks: int, n: int, num_levels: int) -> list[LevelPlan]:
    if n < 1:
        raise ValueError("num_experts must be >= 1")
    plans = []
    for lvl in range(num_levels):
        first, last = lvl == 0, lvl == num_levels - 1
        G = num_tasks if last else n
        gates = tuple(Gate(0 if first else None, tuple(range(n))) for _ in range(G))
        plans.append(LevelPlan(1 if first else n, (0,) * n if first else tuple(range(n)), gates))
    return plans


@register_model
class MLMMoE(FusedExpertModel):
    """Multi-level MMoE: level l's n gates (T at the last) fuse its experts into the
    inputs of level l+1's n experts; every gate reads the raw input.

    Args:
        num_experts: n experts per level; the other options as :class:`AdaTTSp`.
    """

    name = "ml_mmoe"
    description = "Multi-level MMoE: stacked MMoE levels, every gate reads the raw input"

    def __init__(
        self,
        num_tasks: int,
        dense_dim: int = 0,
        cat_cardinalities: Sequence[int] = (),
        embedding_dim: int | None = None,
        expert_sizes: Sequence[int | Sequence[int]] = (128, 64),
        num_experts: int = 6,
        gate_hidden: Sequence[int] = (),
        tower_sizes: Sequence[int] = (32,),
        activation: str = "relu",
        multi_valued: Sequence[tuple[int, str, int]] = (),
    ) -> None:
        plans = _mmoe_plans(num_tasks, num_experts, len(level_sizes(expert_sizes)))
        self.num_experts = num_experts
        super().__init__(plans, num_tasks, dense_dim, cat_cardinalities, embedding_dim,
                         expert_sizes, gate_hidden, tower_sizes, activation, multi_valued)


@register_model
class MMoE(MLMMoE):
    """MMoE (Ma et al., KDD'18, Eq. 12-13): n shared experts on x, one gate per task.

    Args: as :class:`MLMMoE` with a single level (``expert_sizes`` = one MLP).
    """

    name = "mmoe"
    description = "MMoE: shared experts on the input, one softmax gate per task"

    def __init__(
        self,
        num_tasks: int,
        dense_dim: int = 0,
        cat_cardinalities: Sequence[int] = (),
        embedding_dim: int | None = None,
        expert_sizes: Sequence[int | Sequence[int]] = ((128, 64),),
        num_experts: int = 6,
        gate_hidden: Sequence[int] = (),
        tower_sizes: Sequence[int] = (32,),
        activation: str = "relu",
        multi_valued: Sequence[tuple[int, str, int]] = (),
    ) -> None:
        if len(level_sizes(expert_sizes)) != 1:
            raise ValueError("mmoe has one level: give expert_sizes as one MLP, e.g. [[128, 64]]")
        super().__init__(num_tasks, dense_dim, cat_cardinalities, embedding_dim, expert_sizes,
                         num_experts, gate_hidden, tower_sizes, activation, multi_valued)
