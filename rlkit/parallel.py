"""How a run is laid out over GPUs: world size, SGLang TP groups, FSDP mesh, per-rank batch sizes.

verl counts ``data.train_batch_size`` and ``ppo_mini_batch_size`` in prompts; each prompt yields
``rollout.n`` responses, and each of the ``nnodes * n_gpus_per_node`` ranks (one per GPU) works on
its 1/world share of those responses. :class:`ParallelPlan` does this arithmetic in one place:
``rlkit.config.validate`` reports its :meth:`~ParallelPlan.problems`, and the workers take their
sizes from it, so what validation accepts is what runs. Pure: only the standard library.

From a config (four GPUs, SGLang TP groups of two, GRPO with two responses per prompt)::

    >>> from rlkit.config import PPOConfig
    >>> from rlkit.parallel import ParallelPlan
    >>> cfg = PPOConfig.from_overrides([
    ...     "trainer.n_gpus_per_node=4", "actor_rollout_ref.rollout.name=sglang",
    ...     "actor_rollout_ref.rollout.tensor_model_parallel_size=2", "algorithm.adv_estimator=grpo",
    ...     "data.train_batch_size=64", "actor_rollout_ref.rollout.n=2",
    ...     "actor_rollout_ref.actor.ppo_mini_batch_size=16",
    ...     "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4"])
    >>> plan = ParallelPlan.from_config(cfg)
    >>> plan.world_size, plan.rollout_dp, plan.tp_groups
    (4, 2, ((0, 1), (2, 3)))
    >>> actor = plan.role("actor")  # 64*2/4 = 32 responses per rank, mini 16*2/4 = 8, micro 4
    >>> actor.batch_per_rank, actor.mini_batch_per_rank, actor.num_mini_batches, actor.grad_accum_steps
    (32, 8, 4, 2)
    >>> plan.rank_info(3)
    {'rank': 3, 'node': 0, 'local_rank': 3, 'tp_group': 1, 'tp_ranks': (2, 3), 'tp_rank': 1,
     'dp_rank': 3, 'rollout_dp_rank': 1, 'fsdp_coord': (0, 3)}
    >>> plan.problems()
    []

Or straight from numbers; every broken rule comes back at once, each naming the key and a fix::

    >>> from rlkit.parallel import ParallelPlan
    >>> bad = ParallelPlan.build(nnodes=1, gpus_per_node=4, tp=3, train_batch_size=64, mini_batch_size=16,
    ...                          micro_batch_size_per_gpu=3)
    >>> for p in bad.problems(): print(p)
    actor_rollout_ref.rollout.tensor_model_parallel_size=3: the SGLang TP group must divide the ...
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=3: must divide the per-GPU mini-batch: ...

Decisions (verl's semantics unless noted):

* Training is pure data parallel: data-parallel size = world size (Ulysses sequence parallelism is
  not implemented; ``ulysses_sequence_parallel_size`` does not divide it).
* SGLang TP groups are ``tensor_model_parallel_size`` consecutive global ranks. A group smaller
  than a node must sit inside one node (tp divides ``n_gpus_per_node``); a group larger than a node
  spans whole nodes (tp a multiple of ``n_gpus_per_node``), which SGLang runs with its
  ``nnodes``/``node_rank``/``dist_init_addr`` arguments: verl's own seed command runs TP=16 on two
  nodes of eight GPUs. With ``rollout.name=hf`` each rank generates alone (TP 1).
* ``fsdp_size``: -1 shards over all GPUs, mesh (1, world); otherwise it must divide the world size
  and gives the HSDP mesh (world/fsdp_size replicas, fsdp_size shards). verl silently treats a size
  larger than the world as the world; rlkit refuses it.
* Micro-batches are per rank: ``*_micro_batch_size_per_gpu`` as is, or verl's deprecated global
  ``*_micro_batch_size`` divided by the world size (rounded down, as verl does). Neither set: one
  micro-batch per mini-batch (training) or one forward over the rank's batch (log-probs, values).
  With dynamic batch size a micro-batch is packed up to a token budget, recorded instead.
  A training micro-batch larger than the per-rank mini-batch is accepted, as verl's workers accept
  it: the mini-batch runs as one micro-batch (micro per rank = mini per rank), and
  :meth:`~ParallelPlan.warnings` says so in one line (``validate()`` warns with it). A smaller one
  must divide the per-rank mini-batch.
* The mini-batch in responses must split evenly over the ranks, dynamic batch size or not (verl
  would otherwise train each rank on a rounded-down share and add a short last mini-batch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

__all__ = ["ParallelPlan", "RoleSizes", "PLAN_KEYS"]

A, R, RO, C = "actor_rollout_ref.actor", "actor_rollout_ref.ref", "actor_rollout_ref.rollout", "critic"

# Every config key the plan reads (dotted paths of rlkit.PPOConfig).
PLAN_KEYS = (
    "trainer.nnodes", "trainer.n_gpus_per_node", "data.train_batch_size", "algorithm.adv_estimator",
    f"{RO}.name", f"{RO}.n", f"{RO}.tensor_model_parallel_size",
    f"{A}.ppo_mini_batch_size", f"{A}.ppo_micro_batch_size", f"{A}.ppo_micro_batch_size_per_gpu",
    f"{A}.use_dynamic_bsz", f"{A}.ppo_max_token_len_per_gpu", f"{A}.ppo_epochs", f"{A}.fsdp_config.fsdp_size",
    f"{R}.log_prob_micro_batch_size", f"{R}.log_prob_micro_batch_size_per_gpu", f"{R}.log_prob_use_dynamic_bsz",
    f"{R}.log_prob_max_token_len_per_gpu", f"{R}.fsdp_config.fsdp_size",
    f"{RO}.log_prob_micro_batch_size", f"{RO}.log_prob_micro_batch_size_per_gpu", f"{RO}.log_prob_use_dynamic_bsz",
    f"{RO}.log_prob_max_token_len_per_gpu",
    f"{C}.ppo_mini_batch_size", f"{C}.ppo_micro_batch_size", f"{C}.ppo_micro_batch_size_per_gpu",
    f"{C}.forward_micro_batch_size", f"{C}.forward_micro_batch_size_per_gpu", f"{C}.use_dynamic_bsz",
    f"{C}.ppo_max_token_len_per_gpu", f"{C}.forward_max_token_len_per_gpu", f"{C}.ppo_epochs",
    f"{C}.model.fsdp_config.fsdp_size",
)
_TEXT_KEYS = {"algorithm.adv_estimator", f"{RO}.name"}
_MISSING = object()


@dataclass(frozen=True)
class RoleSizes:
    """One role's sizes on one rank, counted in responses (rows of the batch), not prompts.

    Roles: ``actor`` and ``critic`` update weights (mini-batches, epochs, gradient accumulation);
    ``ref``, ``rollout`` (old log-probs) and ``values`` (critic forward) only run forward passes.
    A size is None when the config leaves it undefined or breaks a rule (see ``problems()``).
    """

    role: str
    section: str  # config prefix of the role's keys
    trains: bool  # True: actor/critic update; False: forward only
    batch_per_rank: Optional[int]  # responses per rank per step = train_batch_size*n/world
    mini_batch_per_rank: Optional[int]  # responses per optimizer step per rank = mini*n/world
    num_mini_batches: Optional[int]  # optimizer steps per epoch = train_batch_size/mini
    epochs: Optional[int]  # passes over the batch (ppo_epochs)
    micro_batch_per_rank: Optional[int]  # responses per forward(/backward); None with dynamic bsz
    micro_source: str  # per_gpu | global | default | tokens
    max_token_len_per_rank: Optional[int]  # token budget per micro-batch (dynamic bsz only)
    grad_accum_steps: Optional[int]  # micro-batches per mini-batch (training, fixed-size micro only)
    forward_passes: Optional[int]  # micro-batches per step (forward-only roles, fixed-size micro only)
    fsdp_mesh: Optional[Tuple[int, int]]  # (replicate, shard) of the role's model

    @property
    def dynamic(self) -> bool:
        return self.micro_source == "tokens"


@dataclass(frozen=True, repr=False)
class ParallelPlan:
    """Cluster layout and per-rank batch sizes of one run; build with :meth:`from_config` or :meth:`build`.

    A plan is built even from a broken config: sizes it cannot compute are None, and
    :meth:`problems` lists every rule broken, in ``rlkit.config.validate``'s wording.
    """

    nnodes: Optional[int]
    gpus_per_node: Optional[int]
    world_size: Optional[int]  # nnodes * gpus_per_node
    rollout_name: Optional[str]
    rollout_tp: Optional[int]  # SGLang TP size actually used (1 for hf)
    rollout_dp: Optional[int]  # rollout engines = world / tp
    tp_groups: Tuple[Tuple[int, ...], ...]  # global ranks of each engine, consecutive
    train_dp: Optional[int]  # training data-parallel size = world (no sequence parallelism)
    train_batch_size: Optional[int]  # prompts per step (data.train_batch_size)
    rollout_n: Optional[int]  # responses per prompt
    roles: Tuple[RoleSizes, ...]
    issues: Tuple[str, ...]
    notes: Tuple[str, ...] = ()  # accepted settings the plan adjusts, each one line (validate() warns with them)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_config(cls, cfg: Any) -> "ParallelPlan":
        """The plan of an ``rlkit.PPOConfig`` (or a nested dict with the same keys).

        Keys that are absent or do not resolve count as unknown: rules needing them are skipped.
        """
        values: Dict[str, Any] = {}
        for path in PLAN_KEYS:
            v = _lookup(cfg, path)
            if v is not _MISSING:
                values[path] = v
        return cls.from_values(values)

    @classmethod
    def build(cls, nnodes: int = 1, gpus_per_node: int = 1, *, tp: int = 1, rollout: str = "sglang",
              train_batch_size: int, n: int = 1, mini_batch_size: Optional[int] = None,
              micro_batch_size_per_gpu: Optional[int] = None, micro_batch_size: Optional[int] = None,
              log_prob_micro_batch_size_per_gpu: Optional[int] = None,
              log_prob_micro_batch_size: Optional[int] = None, use_dynamic_bsz: bool = False,
              max_token_len_per_gpu: int = 16384, fsdp_size: int = -1, epochs: int = 1,
              critic: bool = False) -> "ParallelPlan":
        """A plan from plain numbers (sizes in prompts, as in the config); actor, critic and ref
        share the mini/micro settings, ref and old-log-prob share ``log_prob_*``.
        ``mini_batch_size`` defaults to ``train_batch_size`` (one optimizer step per epoch)."""
        mini = train_batch_size if mini_batch_size is None else mini_batch_size
        values = {
            "trainer.nnodes": nnodes, "trainer.n_gpus_per_node": gpus_per_node,
            "data.train_batch_size": train_batch_size, "algorithm.adv_estimator": "gae" if critic else "grpo",
            f"{RO}.name": rollout, f"{RO}.n": n, f"{RO}.tensor_model_parallel_size": tp,
        }
        for sec, fsdp_key in ((A, f"{A}.fsdp_config.fsdp_size"), (C, f"{C}.model.fsdp_config.fsdp_size")):
            values.update({f"{sec}.ppo_mini_batch_size": mini, f"{sec}.ppo_micro_batch_size": micro_batch_size,
                           f"{sec}.ppo_micro_batch_size_per_gpu": micro_batch_size_per_gpu,
                           f"{sec}.use_dynamic_bsz": use_dynamic_bsz,
                           f"{sec}.ppo_max_token_len_per_gpu": max_token_len_per_gpu, f"{sec}.ppo_epochs": epochs,
                           fsdp_key: fsdp_size})
        values.update({f"{C}.forward_micro_batch_size": micro_batch_size,
                       f"{C}.forward_micro_batch_size_per_gpu": micro_batch_size_per_gpu,
                       f"{C}.forward_max_token_len_per_gpu": max_token_len_per_gpu,
                       f"{R}.fsdp_config.fsdp_size": fsdp_size})
        for sec in (R, RO):
            values.update({f"{sec}.log_prob_micro_batch_size": log_prob_micro_batch_size,
                           f"{sec}.log_prob_micro_batch_size_per_gpu": log_prob_micro_batch_size_per_gpu,
                           f"{sec}.log_prob_use_dynamic_bsz": use_dynamic_bsz,
                           f"{sec}.log_prob_max_token_len_per_gpu": max_token_len_per_gpu})
        return cls.from_values(values)

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "ParallelPlan":
        """The plan from resolved values keyed by dotted config path (see ``PLAN_KEYS``); an absent
        key is unknown. ``rlkit.config.validate`` calls this with the values it has resolved."""
        return _Planner(values).plan()

    # ------------------------------------------------------------------ reading
    def problems(self) -> List[str]:
        """Every broken rule: key=value, the rule, and a fix. Empty when the plan can run."""
        return list(self.issues)

    def warnings(self) -> List[str]:
        """Settings the plan accepts but adjusts (one line each, saying what is used); empty when none.
        ``rlkit.config.validate`` emits each as a :class:`UserWarning`."""
        return list(self.notes)

    def role(self, name: str) -> RoleSizes:
        """Sizes of ``actor``, ``critic``, ``ref``, ``rollout`` (old log-probs) or ``values``."""
        for r in self.roles:
            if r.role == name:
                return r
        raise KeyError(f"no role {name!r} in this plan (roles: {', '.join(r.role for r in self.roles)}); "
                       "critic and values exist only when the critic is used (algorithm.adv_estimator=gae)")

    @property
    def fsdp_mesh(self) -> Optional[Tuple[int, int]]:
        """The actor's FSDP mesh (replicate, shard)."""
        return self.role("actor").fsdp_mesh

    def rank_info(self, rank: int) -> Dict[str, Any]:
        """Where global ``rank`` sits: node, local rank, TP group (index and ranks), TP rank,
        training data-parallel rank, rollout data-parallel rank (= its engine) and its
        (replicate, shard) coordinate in the actor's FSDP mesh."""
        if self.world_size is None or not self.tp_groups:
            raise ValueError(f"no rank layout: the plan has problems: {'; '.join(self.issues)}")
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside 0..{self.world_size - 1} (world size {self.world_size})")
        tp = len(self.tp_groups[0])
        mesh = self.fsdp_mesh
        return {
            "rank": rank,
            "node": rank // self.gpus_per_node,  # ranks fill node 0 first: rank = node*gpus_per_node + local
            "local_rank": rank % self.gpus_per_node,
            "tp_group": rank // tp,  # groups are tp consecutive ranks
            "tp_ranks": self.tp_groups[rank // tp],
            "tp_rank": rank % tp,
            "dp_rank": rank,  # training data parallel over every rank
            "rollout_dp_rank": rank // tp,  # one engine per TP group
            "fsdp_coord": (rank // mesh[1], rank % mesh[1]) if mesh else None,  # row-major (replicate, shard)
        }

    def describe(self) -> str:
        """A table for notebooks: cluster, rollout engines, FSDP mesh, per-rank sizes of each role."""
        def s(v: Any) -> str:
            return "-" if v is None else str(v)

        nodes = (f"{s(self.nnodes)} node{'s' if self.nnodes != 1 else ''} x {s(self.gpus_per_node)} "
                 f"GPU{'s' if self.gpus_per_node != 1 else ''}")
        lines = [f"ParallelPlan: {nodes} = world {s(self.world_size)}; "
                 f"{s(self.train_batch_size)} prompts x n={s(self.rollout_n)} per step"]
        groups = " ".join("[" + ",".join(map(str, g)) + "]" for g in self.tp_groups[:8])
        if len(self.tp_groups) > 8:
            groups += f" ... ({len(self.tp_groups)} groups)"
        lines.append(f"rollout ({s(self.rollout_name)}): TP {s(self.rollout_tp)} x DP {s(self.rollout_dp)}"
                     + (f"; TP groups {groups}" if groups else ""))
        lines.append(f"training: data parallel {s(self.train_dp)}; FSDP mesh (replicate, shard) = "
                     + ", ".join(f"{r.role} {s(r.fsdp_mesh)}" for r in self.roles if r.role in ("actor", "critic", "ref")))
        head = ("role", "batch/rank", "mini/rank", "mini-batches", "epochs", "micro/rank", "accum", "fwd passes")
        rows = [head]
        for r in self.roles:
            micro = f"{s(r.max_token_len_per_rank)} tok" if r.dynamic else s(r.micro_batch_per_rank)
            rows.append((r.role, s(r.batch_per_rank), s(r.mini_batch_per_rank), s(r.num_mini_batches), s(r.epochs),
                         micro, s(r.grad_accum_steps), s(r.forward_passes)))
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        for row in rows:
            lines.append("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                                          enumerate(zip(row, widths))).rstrip())
        lines.append("sizes in responses (rows); micro 'tok' = dynamic batch size token budget")
        lines.extend(f"note: {w}" for w in self.notes)
        if self.issues:
            lines.append(f"{len(self.issues)} problem{'s' if len(self.issues) > 1 else ''}:")
            lines.extend(f"  - {p}" for p in self.issues)
        return "\n".join(lines)

    def __repr__(self) -> str:
        a = next((r for r in self.roles if r.role == "actor"), None)
        micro = None if a is None else (f"{a.max_token_len_per_rank} tokens" if a.dynamic else a.micro_batch_per_rank)
        actor = "" if a is None else (f", actor batch/mini/micro per rank={a.batch_per_rank}/{a.mini_batch_per_rank}/"
                                      f"{micro}")
        return (f"ParallelPlan(world={self.world_size} ({self.nnodes}x{self.gpus_per_node}), "
                f"rollout={self.rollout_name} tp={self.rollout_tp} dp={self.rollout_dp}, "
                f"fsdp_mesh={self.fsdp_mesh if a else None}{actor}, problems={len(self.issues)})")


# ---------------------------------------------------------------------------------- the arithmetic

class _Planner:
    """Reads the values once, applies every rule in order, and assembles the plan."""

    def __init__(self, values: Mapping[str, Any]):
        self.vals: Dict[str, Any] = {}
        for k, v in values.items():
            if k not in PLAN_KEYS:
                continue
            flag = k.endswith("use_dynamic_bsz")
            if k in _TEXT_KEYS or v is None or (isinstance(v, bool) if flag else type(v) is int):
                self.vals[k] = v
            # anything else (a float or bool batch size, a leftover interpolation string) counts as unknown
        self.problems: List[str] = []
        self.notes: List[str] = []

    # -- helpers in validate()'s style
    def get(self, path: str) -> Any:
        return self.vals.get(path, _MISSING)

    def ok(self, *paths: str) -> bool:  # every input known and not None
        return all(self.get(p) is not _MISSING and self.get(p) is not None for p in paths)

    def bad(self, path: str, rule: str, fix: str) -> None:
        self.problems.append(f"{path}={_fmt(self.vals.get(path))}: {rule}. Fix: {fix.rstrip('.')}.")

    def rule(self, path: str, test: Any, text: str, fix: str) -> None:
        if self.ok(path) and not test(self.get(path)):
            self.bad(path, text, fix)

    # -- the plan
    def plan(self) -> ParallelPlan:
        get, ok, bad, rule = self.get, self.ok, self.bad, self.rule

        # cluster shape
        rule("trainer.nnodes", lambda v: v >= 1, "must be >= 1", "use trainer.nnodes=1 on one machine")
        rule("trainer.n_gpus_per_node", lambda v: v >= 1, "must be >= 1", "use trainer.n_gpus_per_node=1 for one device")
        nnodes, gpn = get("trainer.nnodes"), get("trainer.n_gpus_per_node")
        shape_ok = ok("trainer.nnodes", "trainer.n_gpus_per_node") and nnodes >= 1 and gpn >= 1
        self.world = world = nnodes * gpn if shape_ok else None  # world = nnodes * n_gpus_per_node
        self.world_txt = f"nnodes*n_gpus_per_node = {_fmt(nnodes)}*{_fmt(gpn)} = {world} GPUs"

        # responses per step
        n = get(f"{RO}.n")
        rule(f"{RO}.n", lambda v: v >= 1, "must be >= 1 (responses per prompt)", f"{RO}.n=1 for PPO, e.g. 5 for GRPO")
        self.n = n if ok(f"{RO}.n") and n >= 1 else None
        tb = get("data.train_batch_size")
        rule("data.train_batch_size", lambda v: v > 0, "must be > 0",
             "set a positive number, e.g. data.train_batch_size=1024")
        self.tb = tb if ok("data.train_batch_size") and tb > 0 else None
        if self.tb and self.n and world and (tb * n) % world:
            bad("data.train_batch_size",
                f"train_batch_size*rollout.n = {tb}*{n} = {tb * n} responses must split evenly over the {self.world_txt}",
                f"make train_batch_size*rollout.n a multiple of {world}")
        # each rank's share of the step's responses: train_batch_size * n / world
        self.batch_per_rank = tb * n // world if self.tb and self.n and world and (tb * n) % world == 0 else None

        name, tp_groups, tp_eff, rollout_dp = self._rollout(world, gpn)

        use_critic = get("algorithm.adv_estimator") == "gae"
        fsdp_a = self._fsdp(f"{A}.fsdp_config.fsdp_size")
        fsdp_r = self._fsdp(f"{R}.fsdp_config.fsdp_size")
        roles = [
            self._role("actor", A, "ppo_mini_batch_size", "ppo_micro_batch_size", "ppo_micro_batch_size_per_gpu",
                       "use_dynamic_bsz", "ppo_max_token_len_per_gpu", "ppo_epochs", fsdp_a),
            self._role("ref", R, None, "log_prob_micro_batch_size", "log_prob_micro_batch_size_per_gpu",
                       "log_prob_use_dynamic_bsz", "log_prob_max_token_len_per_gpu", None, fsdp_r),
            self._role("rollout", RO, None, "log_prob_micro_batch_size", "log_prob_micro_batch_size_per_gpu",
                       "log_prob_use_dynamic_bsz", "log_prob_max_token_len_per_gpu", None, fsdp_a),
        ]
        if use_critic:  # the critic exists only for gae
            fsdp_c = self._fsdp(f"{C}.model.fsdp_config.fsdp_size")
            critic = self._role("critic", C, "ppo_mini_batch_size", "ppo_micro_batch_size",
                                "ppo_micro_batch_size_per_gpu", "use_dynamic_bsz", "ppo_max_token_len_per_gpu",
                                "ppo_epochs", fsdp_c)
            # the value forward has its own micro keys, which follow ppo_micro_* unless set; rules
            # already reported for the same value under the ppo_* key are not repeated
            same = {k for k in ("forward_micro_batch_size", "forward_micro_batch_size_per_gpu")
                    if get(f"{C}.{k}") == get(f"{C}.{k.replace('forward', 'ppo')}")}
            values = self._role("values", C, None, "forward_micro_batch_size", "forward_micro_batch_size_per_gpu",
                                "use_dynamic_bsz", "forward_max_token_len_per_gpu", None, fsdp_c, quiet=same)
            roles[1:1] = [critic, values]
        return ParallelPlan(
            nnodes=nnodes if ok("trainer.nnodes") else None, gpus_per_node=gpn if ok("trainer.n_gpus_per_node") else None,
            world_size=world, rollout_name=name, rollout_tp=tp_eff, rollout_dp=rollout_dp, tp_groups=tp_groups,
            train_dp=world, train_batch_size=self.tb, rollout_n=self.n, roles=tuple(roles),
            issues=tuple(self.problems), notes=tuple(self.notes))

    def _rollout(self, world: Optional[int], gpn: Any):
        """SGLang TP groups: tp consecutive ranks, inside one node or over whole nodes."""
        get, ok, bad = self.get, self.ok, self.bad
        key = f"{RO}.tensor_model_parallel_size"
        name = get(f"{RO}.name") if ok(f"{RO}.name") else None
        tp = get(key)
        self.rule(key, lambda v: v >= 1, "must be >= 1", f"use {key}=1")
        tp_ok = ok(key) and tp >= 1
        if name != "sglang":  # hf (or an unknown name, reported elsewhere): every rank generates alone
            tp_eff: Optional[int] = 1
        elif not (world and tp_ok):
            tp_eff = None
        elif world % tp:
            bad(key, f"the SGLang TP group must divide the {self.world_txt}",
                f"pick a divisor of {world} (e.g. {key}=1 on one GPU)")
            tp_eff = None
        elif tp < gpn and gpn % tp:
            # ranks fill nodes in order, so a group of tp < gpus_per_node straddles a node boundary
            # unless tp divides gpus_per_node
            bad(key, f"an SGLang TP group of {tp} consecutive GPUs would straddle two nodes of "
                f"n_gpus_per_node={gpn}; a group smaller than a node must fit inside one",
                f"use a divisor of {gpn} (e.g. {key}={_divisor_near(gpn, tp)})")
            tp_eff = None
        elif tp > gpn and tp % gpn:
            # a group larger than a node runs as one multi-node SGLang engine (nnodes = tp / gpus_per_node),
            # which needs every GPU of each node it uses
            bad(key, f"an SGLang TP group larger than a node must span whole nodes: {tp} is not a multiple of "
                f"n_gpus_per_node={gpn}",
                f"use a divisor of {gpn} or a multiple of {gpn} that divides {world}")
            tp_eff = None
        else:
            tp_eff = tp
        if not (world and tp_eff):
            return name, (), tp_eff, None
        # engine g holds global ranks g*tp .. g*tp + tp - 1; rollout DP = world / tp engines
        groups = tuple(tuple(range(g * tp_eff, (g + 1) * tp_eff)) for g in range(world // tp_eff))
        return name, groups, tp_eff, world // tp_eff

    def _fsdp(self, key: str) -> Optional[Tuple[int, int]]:
        """(replicate, shard): -1 shards over the world, else world/fsdp_size replicas of fsdp_size shards."""
        fs, world = self.get(key), self.world
        if not self.ok(key):
            return None
        if fs == -1:
            return (1, world) if world else None
        if fs < 1:
            self.bad(key, "must be -1 (shard over all GPUs) or >= 1", f"use {key}=-1")
            return None
        if not world:
            return None
        if world % fs:
            self.bad(key, f"the FSDP shard group must divide the {self.world_txt}",
                     f"use {key}=-1 (shard over all GPUs) or a divisor of {world} (e.g. {key}={_divisor_near(world, fs)})")
            return None
        return (world // fs, fs)  # HSDP: replicate world/fsdp_size times, shard over fsdp_size

    def _role(self, role: str, sec: str, mini_key: Optional[str], micro_key: str, micro_gpu_key: str,
              dyn_key: str, tok_key: str, epochs_key: Optional[str], mesh: Optional[Tuple[int, int]],
              quiet: Any = ()) -> RoleSizes:
        """The mini/micro rules of one role (verl's FSDP worker arithmetic) and its per-rank sizes."""
        get, ok = self.get, self.ok
        world, world_txt, n, tb = self.world, self.world_txt, self.n, self.tb

        def bad(key: str, text: str, fix: str) -> None:
            if key.rsplit(".", 1)[-1] not in quiet:
                self.bad(key, text, fix)

        def rule(key: str, test: Any, text: str, fix: str) -> None:
            if ok(key) and not test(get(key)):
                bad(key, text, fix)

        mini = get(f"{sec}.{mini_key}") if mini_key else None
        micro, micro_gpu = get(f"{sec}.{micro_key}"), get(f"{sec}.{micro_gpu_key}")
        dyn = get(f"{sec}.{dyn_key}") is True
        if ok(f"{sec}.{micro_key}") and ok(f"{sec}.{micro_gpu_key}"):
            bad(f"{sec}.{micro_key}",
                f"set together with {sec}.{micro_gpu_key}={_fmt(micro_gpu)}; only one may be set "
                f"({micro_key} is verl's deprecated global form)",
                f"remove {sec}.{micro_key} (or set it to null) and keep {sec}.{micro_gpu_key}")
        for k in (micro_key, micro_gpu_key):
            rule(f"{sec}.{k}", lambda v: v >= 1, "must be >= 1 or null", f"e.g. {sec}.{k}=4")
        if world and ok(f"{sec}.{micro_key}") and 1 <= micro < world:
            bad(f"{sec}.{micro_key}",
                f"the deprecated global micro-batch is split over the {world_txt}, leaving < 1 per GPU",
                f"use >= {world}, or set {sec}.{micro_gpu_key} instead")

        # the micro-batch per rank: the per-GPU key as is, else the deprecated global one / world (verl: //=)
        if ok(f"{sec}.{micro_gpu_key}") and micro_gpu >= 1:
            micro_rank, source = micro_gpu, "per_gpu"
        elif ok(f"{sec}.{micro_key}") and world and micro >= world:
            micro_rank, source = micro // world, "global"
        else:
            micro_rank, source = None, "default"
        tokens = get(f"{sec}.{tok_key}") if dyn and ok(f"{sec}.{tok_key}") else None
        if dyn:
            micro_rank, source = None, "tokens"
        epochs = get(f"{sec}.{epochs_key}") if epochs_key and ok(f"{sec}.{epochs_key}") else None
        batch = self.batch_per_rank

        if mini_key is None:  # forward only: chunks of micro over the rank's whole batch
            if source == "default":
                micro_rank = batch  # one forward over the rank's share
            # forward passes = ceil(batch_per_rank / micro)
            passes = -(-batch // micro_rank) if batch and micro_rank else None
            return RoleSizes(role, sec, False, batch, None, None, None, micro_rank, source, tokens, None, passes, mesh)

        none = RoleSizes(role, sec, True, batch, None, None, epochs, micro_rank if not dyn else None, source,
                         tokens, None, None, mesh)
        rule(f"{sec}.{mini_key}", lambda v: v >= 1, "must be >= 1", f"e.g. {sec}.{mini_key}=64")
        if not (ok(f"{sec}.{mini_key}") and mini >= 1 and n):
            return none
        if tb and (tb * n) % (mini * n):  # mini*n responses must divide train_batch_size*n responses
            bad(f"{sec}.{mini_key}",
                f"the mini-batch counted in responses ({mini_key}*rollout.n = {mini}*{n} = {mini * n}) must divide "
                f"the batch counted in responses (train_batch_size*rollout.n = {tb}*{n} = {tb * n}); "
                f"both sizes are given in prompts and each prompt yields rollout.n responses",
                f"choose a divisor of data.train_batch_size={tb}, e.g. {sec}.{mini_key}={_divisor_near(tb, mini)}")
            tb_fits = False
        else:
            tb_fits = bool(tb)
        if world is None:
            return none
        per_gpu = mini * n // world  # responses per optimizer step per rank = mini * n / world
        if per_gpu < 1:
            bad(f"{sec}.{mini_key}",
                f"the mini-batch of {mini}*{n} = {mini * n} responses is smaller than the {world_txt}, "
                "leaving a GPU with no data",
                f"raise {sec}.{mini_key} to at least {-(-world // n)} or use fewer GPUs")
            return none
        if (mini * n) % world:
            good = [d for d in _divisors(tb) if (d * n) % world == 0] if tb else []
            hint = f" (e.g. {sec}.{mini_key}={min(good, key=lambda d: (abs(d - mini), d))})" if good else ""
            bad(f"{sec}.{mini_key}",
                f"the mini-batch of {mini_key}*rollout.n = {mini}*{n} = {mini * n} responses must split evenly "
                f"over the {world_txt}",
                f"make {mini_key}*rollout.n a multiple of {world}{hint}")
            return none
        num_mini = tb // mini if tb_fits else None  # optimizer steps per epoch = train_batch_size / mini
        if dyn:
            return RoleSizes(role, sec, True, batch, per_gpu, num_mini, epochs, None, source, tokens, None, None, mesh)
        if ok(f"{sec}.{micro_key}") and micro >= 1:  # deprecated global micro-batch, split over GPUs
            micro_gpu = micro // world if micro_gpu is None or micro_gpu is _MISSING else micro_gpu
            if mini % micro and not (source == "global" and micro_gpu > per_gpu):  # larger: one micro-batch
                bad(f"{sec}.{micro_key}",
                    f"must divide {sec}.{mini_key}={mini}",
                    f"use a divisor of {mini}, or the per-GPU form {sec}.{micro_gpu_key}")
        if source in ("per_gpu", "global") and micro_gpu > per_gpu:
            # verl's workers split a mini-batch into chunks of the micro size: a micro-batch larger than the
            # per-GPU mini-batch is one chunk, the whole per-GPU mini-batch
            key = f"{sec}.{micro_gpu_key}" if source == "per_gpu" else f"{sec}.{micro_key}"
            given = f"{key}={micro_gpu}" if source == "per_gpu" else f"{key}={micro} ({micro}/{world} = {micro_gpu} per GPU)"
            self.notes.append(
                f"{given} is larger than the per-GPU mini-batch {mini_key}*rollout.n/(nnodes*n_gpus_per_node) = "
                f"{mini}*{n}/{world} = {per_gpu} responses; using one micro-batch of {per_gpu} per mini-batch "
                f"(micro-batch per rank = mini-batch per rank = {per_gpu}, as verl's workers do)")
            micro_rank = per_gpu
        elif ok(f"{sec}.{micro_gpu_key}") and micro_gpu >= 1 and per_gpu % micro_gpu:
            bad(f"{sec}.{micro_gpu_key}",
                f"must divide the per-GPU mini-batch: {mini_key}*rollout.n/(nnodes*n_gpus_per_node) = "
                f"{mini}*{n}/{world} = {per_gpu} responses per GPU",
                f"use a divisor of {per_gpu} (e.g. {sec}.{micro_gpu_key}={_divisor_near(per_gpu, micro_gpu)}), "
                f"or raise {sec}.{mini_key} so that {mini_key}*rollout.n/{world} is a multiple of {micro_gpu}")
            micro_rank = None
        elif ok(f"{sec}.{micro_key}") and micro >= world and micro_gpu >= 1 and per_gpu % micro_gpu:
            bad(f"{sec}.{micro_key}",
                f"{micro} split over {world} GPUs is {micro_gpu} per GPU, which must divide the per-GPU "
                f"mini-batch {mini}*{n}/{world} = {per_gpu}",
                f"use a multiple of {world} whose per-GPU share divides {per_gpu}")
            micro_rank = None
        elif source == "default":
            micro_rank = per_gpu  # neither micro key: one micro-batch per mini-batch
        # gradient accumulation = micro-batches per mini-batch = (mini * n / world) / micro
        accum = per_gpu // micro_rank if micro_rank and per_gpu % micro_rank == 0 else None
        return RoleSizes(role, sec, True, batch, per_gpu, num_mini, epochs, micro_rank if accum else None, source,
                         None, accum, None, mesh)


# ---------------------------------------------------------------------------------- helpers

def _lookup(cfg: Any, path: str) -> Any:
    """``cfg.a.b.c`` by attribute access / ``.get``; _MISSING when absent or unresolvable."""
    node = cfg
    for seg in path.split("."):
        try:
            node = node.get(seg, _MISSING) if hasattr(node, "get") else getattr(node, seg, _MISSING)
        except Exception:  # an interpolation that does not resolve
            return _MISSING
        if node is _MISSING:
            return _MISSING
    return node


def _fmt(v: Any) -> str:
    """A value in override syntax, for messages (as rlkit.config writes them)."""
    if v is None:
        return "null"
    if isinstance(v, str):
        return v if v else "''"
    return repr(v)


def _divisors(total: int) -> List[int]:
    return [d for d in range(1, total + 1) if total % d == 0] if total > 0 else [1]


def _divisor_near(total: int, want: int) -> int:
    """The divisor of ``total`` closest to ``want`` (for 'e.g.' hints)."""
    return min(_divisors(total), key=lambda d: (abs(d - want), d))
