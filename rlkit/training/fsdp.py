"""FSDP2 for rlkit's roles: device mesh, ``fully_shard`` per decoder layer, full state dicts, clipping.

One rank process per GPU (or per CPU rank with gloo) calls these after ``init_process_group``:

* :func:`device_mesh` - the 1-d mesh ``("shard",)`` over all ranks (``fsdp_size=-1``), or the 2-d
  HSDP mesh ``("replicate", "shard")`` when ``fsdp_size`` divides the world (shapes from
  :class:`rlkit.parallel.ParallelPlan`).
* :func:`shard_model` - ``fully_shard`` on every decoder layer, then on the root (so the embedding,
  the final norm, a tied lm_head and a value head form the root's group); on a mesh of one rank
  without offload the whole model is one unit (nothing to shard, fewer hooks per micro-batch). Mixed precision:
  ``MixedPrecisionPolicy(param_dtype, reduce_dtype)``; rlkit's roles pass bf16 compute on GPU and
  fp32 on CPU (CPU bf16 matmuls are slow, and the N-rank == 1-rank tests need fp32); master
  weights, optimizer state and the gradient reduction stay fp32. ``offload=True`` adds
  ``CPUOffloadPolicy``: sharded parameters, gradients and the optimizer step live on the CPU and
  each layer is copied to the GPU for its forward/backward (verl's ``fsdp_config.param_offload``).
* :func:`compile_layers` - ``torch.compile`` each decoder layer's ``forward`` (verl's
  ``use_torch_compile``): Inductor fuses the element-wise work between the matmuls (RMSNorm's fp32
  casts, rotary embeddings, the MLP's gating, residual adds) that otherwise dominates a small
  model's step. FSDP2's hooks (all-gather before, reshard after) run outside the compiled code.
* :func:`clip_grad_norm` - the global gradient norm over every shard (``clip_grad_norm_`` on
  DTensor gradients reduces across the mesh), as a float, identical on every rank.
* :func:`full_state_dict` - the whole unsharded state dict (for checkpoints, tests and the ``hf``
  engine's generation copy), on every rank or on rank 0 only.
* :func:`save_sharded` / :func:`load_sharded` - each rank writes (reads) its own shards of the
  model and the AdamW state with ``torch.distributed.checkpoint`` (``get_state_dict`` /
  ``set_state_dict`` + ``dcp.save`` / ``dcp.load``) in one DCP folder; the folder must be the same
  path on every rank (a shared filesystem across nodes). Loads only into the same mesh size.
* :func:`load_full` - load one process's whole ``state_dict()`` of a model and its optimizer (the
  single-process checkpoint layout) into the shards, on a mesh of any size.
* :func:`offload_optimizer` / :func:`load_optimizer` - move AdamW's state (exp_avg, exp_avg_sq:
  2x the sharded parameters) to the CPU between updates and back before the next step
  (verl's ``optimizer_offload``). With ``offload=True`` the state is already on the CPU.

Every function here except :func:`decoder_layers` is a collective when the model is sharded over
more than one rank: all ranks must call it, in the same order.

Not done here: weight sync to SGLang bucket by bucket, resharding a DCP checkpoint to another
number of ranks, FSDP1's ``wrap_policy`` (FSDP2 always wraps per decoder layer), ``forward_prefetch``.

>>> import torch
>>> from rlkit.training.fsdp import decoder_layers
>>> class Block(torch.nn.Module):
...     def __init__(self): super().__init__(); self.lin = torch.nn.Linear(2, 2)
>>> class Net(torch.nn.Module):
...     _no_split_modules = ["Block"]
...     def __init__(self): super().__init__(); self.layers = torch.nn.ModuleList([Block(), Block()]); self.head = torch.nn.Linear(2, 1)
>>> [type(m).__name__ for m in decoder_layers(Net())]
['Block', 'Block']
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

__all__ = ["device_mesh", "decoder_layers", "shard_model", "compile_layers", "is_sharded", "clip_grad_norm", "full_state_dict",
           "offload_optimizer", "load_optimizer", "full_tensors", "optimizer_state_device", "save_sharded", "load_sharded", "load_full"]


def device_mesh(world_size: int, fsdp_size: int = -1, device_type: str = "cpu"):
    """The FSDP mesh: 1-d ``("shard",)`` when ``fsdp_size`` is -1 or the world, else the HSDP mesh
    ``("replicate", "shard")`` of shape ``(world // fsdp_size, fsdp_size)``. Needs an initialised
    process group of ``world_size`` ranks."""
    from torch.distributed.device_mesh import init_device_mesh

    if fsdp_size in (-1, None) or fsdp_size >= world_size:
        return init_device_mesh(device_type, (world_size,), mesh_dim_names=("shard",))
    if fsdp_size < 1 or world_size % fsdp_size:
        raise ValueError(f"fsdp_size={fsdp_size} must divide the world size {world_size} (or be -1)")
    return init_device_mesh(device_type, (world_size // fsdp_size, fsdp_size), mesh_dim_names=("replicate", "shard"))


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks to shard one by one: modules whose class is in a transformers model's
    ``_no_split_modules`` (``Qwen2DecoderLayer``, ...), else the entries of the largest
    ``nn.ModuleList``. Searched through wrappers (the critic's ``ValueModel.backbone``)."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    if names:
        found = [m for m in model.modules() if type(m).__name__ in names]
        # an outer match contains the inner ones: keep the outermost
        outer = [m for m in found if not any(m is not o and any(m is x for x in o.modules()) for o in found)]
        if outer:
            return outer
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def shard_model(model: nn.Module, mesh, *, param_dtype: torch.dtype | None = None,
                reduce_dtype: torch.dtype | None = torch.float32, offload: bool = False,
                reshard_after_forward: bool = True, per_layer: bool | None = None) -> nn.Module:
    """``fully_shard`` every decoder layer, then the root; returns ``model`` (now an FSDPModule).

    Args:
        mesh: from :func:`device_mesh` (1-d: FSDP; 2-d: HSDP, replicate x shard).
        param_dtype: compute dtype of the unsharded parameters (``torch.bfloat16`` on GPU); None keeps
            the stored dtype (fp32 on CPU).
        reduce_dtype: dtype of the gradient reduce-scatter / all-reduce (fp32).
        offload: ``CPUOffloadPolicy`` (sharded parameters, gradients and optimizer step on the CPU;
            pinned memory when CUDA is available).
        reshard_after_forward: free each layer's gathered parameters after its forward (ZeRO-3);
            False keeps them until the backward (ZeRO-2-like, more memory, fewer all-gathers).
        per_layer: a unit per decoder layer (True) or the whole model as one unit (False). None
            (default): per layer, except on a mesh of one rank without offload: there nothing is
            sharded, and per-layer units would only add their hooks (gather, cast, reduce, about a
            millisecond of host time per layer and pass on a CPU) to every forward and backward; the
            one unit keeps the mixed precision (bf16 compute copy, fp32 master weights and gradients)
            at the cost of holding the whole bf16 copy during a micro-batch.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    off = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if offload else OffloadPolicy()
    kwargs = dict(mesh=mesh, mp_policy=mp, offload_policy=off)
    if per_layer is None:
        per_layer = offload or mesh.size() > 1
    if not per_layer:
        fully_shard(model, reshard_after_forward=reshard_after_forward, **kwargs)
        return model
    for layer in decoder_layers(model):
        fully_shard(layer, reshard_after_forward=reshard_after_forward, **kwargs)
    # the root's own parameters are used last in backward; keeping them gathered after the forward saves one all-gather
    fully_shard(model, reshard_after_forward=False, **kwargs)
    return model


def compile_layers(model: nn.Module, backend: str = "inductor", dynamic: bool | None = True) -> int:
    """``torch.compile`` the ``forward`` of every decoder layer of ``model`` (after :func:`shard_model`
    or without it); returns how many layers were compiled. Compilation happens at each layer's first
    call.

    Only the layer's own computation is compiled: FSDP2's pre/post-forward hooks (parameter all-gather,
    mixed-precision cast, reshard) live in the module's ``__call__`` and stay eager, so sharding,
    offload and checkpoints work as without compiling. All layers share one compiled graph (their
    code is the same; the parameters are graph inputs). ``dynamic=True`` compiles for any token count
    at once (packed micro-batches change length every call) instead of recompiling for each new length.
    A layer whose compilation fails warns and runs eagerly from then on.
    """
    layers = decoder_layers(model)
    for layer in layers:
        if not hasattr(layer, "_rlkit_eager_forward"):  # compiling twice would wrap the compiled function
            layer._rlkit_eager_forward = layer.forward
            layer.forward = _with_eager_fallback(layer, torch.compile(layer.forward, backend=backend, dynamic=dynamic))
    return len(layers)


def _with_eager_fallback(layer: nn.Module, compiled):
    """``compiled``, or the layer's eager forward from the first time compiling fails (a warning says why):
    a model or torch version the compiler cannot handle trains eagerly instead of stopping the run."""
    import functools
    import warnings

    from torch._dynamo.exc import TorchDynamoException

    @functools.wraps(layer._rlkit_eager_forward)
    def forward(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except TorchDynamoException as err:
            warnings.warn(f"torch.compile failed on {type(layer).__name__} ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); this layer runs eagerly. Set "
                          "actor_rollout_ref.actor.use_torch_compile=False to skip compiling", RuntimeWarning)
            layer.forward = layer._rlkit_eager_forward
            return layer.forward(*args, **kwargs)

    return forward


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def clip_grad_norm(params: Iterable[nn.Parameter], max_norm: float) -> float:
    """Clip the gradients of ``params`` to a global L2 norm of ``max_norm``; returns the norm before
    clipping (a float, the same on every rank; inf/nan when a gradient is not finite, and then the
    gradients are left as they are so the caller can skip the step).

    DTensor gradients (FSDP2 shards) have their norm reduced over the mesh by ``clip_grad_norm_``;
    plain tensors (one rank, no FSDP) work too.
    """
    from torch.distributed.tensor import DTensor

    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm, error_if_nonfinite=False, foreach=None)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return float(norm)


def full_tensors(named: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype | None = None):
    """Yield each ``(name, tensor)`` of ``named`` unsharded, one at a time, on the mesh's device.

    A DTensor shard (FSDP2) is moved to its mesh's device type first (``CPUOffloadPolicy`` keeps shards
    on the CPU, and NCCL gathers only GPU memory), cast to ``dtype`` when given (before the gather:
    a bf16 engine moves half the bytes), then all-gathered; a plain tensor is only cast. Collective:
    every rank must consume the same names in the same order. The caller decides what to keep, so a
    consumer that drops each tensor never holds more than one.
    """
    from torch.distributed.tensor import DTensor

    for name, t in named:
        t = t.detach()
        if isinstance(t, DTensor):
            local = t.to_local()
            want = t.device_mesh.device_type
            if local.device.type != want or (dtype is not None and local.dtype != dtype):
                local = local.to(device=want, dtype=dtype or local.dtype)
                t = DTensor.from_local(local, t.device_mesh, t.placements, shape=t.shape, stride=t.stride())
            t = t.full_tensor()
        elif dtype is not None:
            t = t.to(dtype)
        yield name, t


def full_state_dict(model: nn.Module, rank0_only: bool = False) -> dict[str, torch.Tensor]:
    """The unsharded state dict on the CPU (every key of ``model.state_dict()``, tied weights under
    both names). ``rank0_only``: other ranks get ``{}`` and never hold a full copy. Collective."""
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    out: dict[str, torch.Tensor] = {}
    # one parameter at a time: a full copy of one tensor on the device, never of the whole model
    for name, t in full_tensors(model.state_dict().items()):
        if not rank0_only or rank == 0:
            out[name] = t.to("cpu", copy=True)
    return out


def optimizer_state_device(optim: torch.optim.Optimizer) -> str | None:
    """Where the optimizer's state tensors are (``"cpu"``, ``"cuda"``), None before the first step."""
    for state in optim.state.values():
        for v in state.values():
            if torch.is_tensor(v) and v.dim() > 0:
                return _local(v).device.type
    return None


def _move_optimizer(optim: torch.optim.Optimizer, device: torch.device | str) -> None:
    for state in optim.state.values():
        for k, v in state.items():
            if torch.is_tensor(v) and v.dim() > 0:  # "step" stays a CPU scalar
                state[k] = v.to(device, non_blocking=True)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()  # the copies above are non-blocking


def offload_optimizer(optim: torch.optim.Optimizer) -> None:
    """Move the optimizer state (AdamW's exp_avg / exp_avg_sq) to the CPU until :func:`load_optimizer`.
    Local: each rank moves its own shard; no communication."""
    _move_optimizer(optim, "cpu")


def load_optimizer(optim: torch.optim.Optimizer, device: torch.device | str) -> None:
    """Bring the optimizer state back to ``device`` before ``optim.step()``."""
    _move_optimizer(optim, device)


def _dcp_state(model: nn.Module, optim: torch.optim.Optimizer | None) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optim is None:
        return {"model": get_model_state_dict(model)}
    msd, osd = get_state_dict(model, optim)
    return {"model": msd, "optim": osd}


def save_sharded(model: nn.Module, optim: torch.optim.Optimizer | None, path) -> None:
    """Write this rank's shards of ``model`` (and of ``optim``'s state unless None) into the DCP
    folder ``path``: ``__<rank>_0.distcp`` per rank, ``.metadata`` from rank 0. Collective.

    An optimizer that has not stepped yet gets its state created by a zero-lr step (DCP's
    ``get_state_dict`` does this); its step count then reads 1."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_dcp_state(model, optim), checkpoint_id=str(path))


def load_sharded(model: nn.Module, optim: torch.optim.Optimizer | None, path) -> None:
    """Load :func:`save_sharded` output from ``path`` into ``model`` (and ``optim``) in place; the mesh
    must have the size it was saved with. Collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    state = _dcp_state(model, optim)
    dcp.load(state, checkpoint_id=str(path))
    if optim is None:
        set_model_state_dict(model, state["model"])
    else:
        set_state_dict(model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"])


def load_full(model: nn.Module, model_state: dict, optim: torch.optim.Optimizer | None = None,
              optim_state: dict | None = None) -> None:
    """Load an unsharded ``model.state_dict()`` (and an ``optim.state_dict()`` of an optimizer built over
    ``model.parameters()`` in the same order) into the sharded ``model`` and ``optim``: every rank
    passes the same full state and keeps its own shards of it (``distribute_tensor`` with
    ``src_data_rank=None``: each rank cuts its part out of its own copy, no communication), on a mesh
    of any size. Optimizer tensors shaped like their parameter are sharded like it and placed where
    its shard lives (the CPU under ``CPUOffloadPolicy``); scalars (AdamW's ``step``) are copied."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.tensor import DTensor, distribute_tensor

    set_model_state_dict(model, model_state, options=StateDictOptions(full_state_dict=True, strict=True))
    if optim is None or optim_state is None:
        return
    params = list(model.parameters())
    ids = sorted(i for g in optim_state["param_groups"] for i in g["params"])
    if ids != list(range(len(params))) or len(optim_state["param_groups"]) != len(optim.param_groups):
        raise ValueError(f"the optimizer state covers {len(ids)} parameters in {len(optim_state['param_groups'])} "
                         f"groups; this model has {len(params)} in {len(optim.param_groups)} (was it saved for another "
                         "model?)")

    def shard(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        if value.dim() == 0 or not isinstance(param, DTensor) or value.shape != param.shape:
            return value.detach().clone()
        local = param.to_local()
        full = value.detach().to(device=local.device, dtype=local.dtype)
        out = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
        if out.to_local().device != local.device:  # the mesh is on the GPU, the shard offloaded to the CPU
            out = DTensor.from_local(out.to_local().to(local.device), param.device_mesh, param.placements,
                                     shape=param.shape, stride=param.stride())
        return out

    state = {i: {k: shard(v, params[i]) if torch.is_tensor(v) else v for k, v in st.items()}
             for i, st in optim_state["state"].items()}
    optim.load_state_dict({"state": state, "param_groups": optim_state["param_groups"]})
