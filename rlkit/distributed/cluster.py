"""Joining a Ray cluster: which address, connecting with a useful error, checking its nodes.

Where the driver connects (:func:`ray_address_for`): ``trainer.ray_address`` (rlkit's key), else the
``RAY_ADDRESS`` environment variable (Ray's own, and what verl reads), else None: Ray's default,
the cluster ``ray start`` left on this machine if there is one, else a new local cluster. Accepted forms: ``auto`` (the cluster ``ray start`` left on this
machine), ``HOST:PORT`` (the head's GCS, port 6379 by default) and ``ray://HOST:PORT`` (Ray Client,
port 10001 by default); an IPv6 host is written in brackets, ``[fd00::2]:6379``
(:mod:`rlkit.addresses`).

A multi-node cluster is started by hand before the run::

    ray start --head --port=6379                 # on the head node
    ray start --address=HEAD:6379                # on every other node
    RAY_ADDRESS=auto python -m rlkit.main_ppo ... trainer.nnodes=2 trainer.n_gpus_per_node=8

:func:`connect` joins it (or starts a local one), :func:`check_nodes` refuses a cluster with too few
nodes or GPUs before any worker starts, listing what the cluster has, and :func:`dump_timeline`
writes ``ray_init.timeline_json_file``. Ray is imported inside the functions (``import rlkit``
stays light).

>>> from rlkit.distributed.cluster import normalize_ray_address
>>> normalize_ray_address("ray://[fd00::2]:10001"), normalize_ray_address(" 10.0.0.2:6379 ")
('ray://[fd00::2]:10001', '10.0.0.2:6379')
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Mapping

from rlkit.addresses import format_host_port, is_ipv6, split_host_port

__all__ = ["ray_address_for", "normalize_ray_address", "connect", "check_cluster_resources", "check_nodes",
           "describe_nodes", "dump_timeline", "FORWARDED_ENV_PREFIXES"]

# Forwarded into every Ray worker: SGLang's and NCCL's switches must reach the engines' processes.
FORWARDED_ENV_PREFIXES = ("SGL_", "SGLANG_", "NCCL_", "TORCH_", "NVSHMEM_", "HF_", "TRANSFORMERS_", "TRITON_",
                          "RLKIT_", "CUDA_LAUNCH_BLOCKING", "PYTHONPATH")

CLIENT_PREFIX = "ray://"
FIX = ("start the cluster first: `ray start --head --port=6379` on the head node, then "
       "`ray start --address=HEAD:6379` on every other node (HEAD: the head node's address)")


def _key(cfg, section: str, name: str):
    """``cfg.section.name`` or None (a config from before the key existed, a plain dict, no section)."""
    if cfg is None:
        return None
    sec = cfg.get(section) if hasattr(cfg, "get") else getattr(cfg, section, None)
    if sec is None:
        return None
    return sec.get(name) if hasattr(sec, "get") else getattr(sec, name, None)


def normalize_ray_address(address: str, source: str = "address") -> str | None:
    """``address`` checked and written canonically: ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``
    with an IPv6 host bracketed; ``local`` (Ray's word for "start a new cluster here") and an empty
    string give None. Anything else raises ValueError naming ``source``, the value and a valid example.

    >>> from rlkit.distributed.cluster import normalize_ray_address
    >>> normalize_ray_address("AUTO"), normalize_ray_address("[fd00::2]:6379"), normalize_ray_address("")
    ('auto', '[fd00::2]:6379', None)
    >>> normalize_ray_address("fd00::2:6379", "RAY_ADDRESS")
    Traceback (most recent call last):
    ...
    ValueError: RAY_ADDRESS='fd00::2:6379' is not a Ray address: an IPv6 host needs brackets. Use 'auto', 'HOST:PORT' or 'ray://HOST:PORT', e.g. '[fd00::2]:6379'
    >>> normalize_ray_address("head-node", "trainer.ray_address")
    Traceback (most recent call last):
    ...
    ValueError: trainer.ray_address='head-node' is not a Ray address: no port. Use 'auto', 'HOST:PORT' or 'ray://HOST:PORT', e.g. 'head-node:6379'
    """
    raw = "" if address is None else str(address)
    a = raw.strip()
    if not a or a.lower() == "local":
        return None
    if a.lower() == "auto":
        return "auto"
    prefix, rest, default_port = "", a, 6379
    if a.lower().startswith(CLIENT_PREFIX):
        prefix, rest, default_port = CLIENT_PREFIX, a[len(CLIENT_PREFIX):], 10001

    def bad(why: str, example: str) -> ValueError:
        return ValueError(f"{source}={raw!r} is not a Ray address: {why}. Use 'auto', 'HOST:PORT' or "
                          f"'ray://HOST:PORT', e.g. {example!r}")

    if "://" in rest or "/" in rest or any(c.isspace() for c in rest):
        raise bad("only 'ray://' may come before the host, and nothing after the port",
                  f"{CLIENT_PREFIX}10.0.0.2:10001")
    if rest.startswith("[") and rest.endswith("]"):  # [ipv6] without a port
        raise bad("no port", prefix + format_host_port(rest, default_port))
    if rest.count(":") > 1 and not rest.startswith("["):  # unbracketed IPv6: is the last group the port?
        host, _, port = rest.rpartition(":")
        example = f"[{host}]:{port}" if port.isdigit() and is_ipv6(host) else format_host_port(rest, default_port)
        raise bad("an IPv6 host needs brackets", prefix + example)
    if ":" not in rest:
        raise bad("no port", prefix + format_host_port(rest, default_port))
    try:
        host, port = split_host_port(rest)
    except ValueError as e:
        raise bad(str(e).split(": ", 1)[-1], f"{prefix}10.0.0.2:{default_port}") from None
    if not host or port == 0:
        raise bad("no host" if not host else "port 0", prefix + format_host_port(host or "10.0.0.2", default_port))
    return prefix + format_host_port(host, port)


def _address_and_source(cfg, environ: Mapping[str, str]) -> tuple[str | None, str | None]:
    value = _key(cfg, "trainer", "ray_address")
    if value is not None and str(value).strip():
        return normalize_ray_address(value, "trainer.ray_address"), "trainer.ray_address"
    value = environ.get("RAY_ADDRESS")
    if value is not None and value.strip():
        return normalize_ray_address(value, "RAY_ADDRESS"), "RAY_ADDRESS"
    return None, None


def ray_address_for(cfg, environ: Mapping[str, str] = os.environ) -> str | None:
    """The Ray address to connect to: ``trainer.ray_address`` wins, else ``RAY_ADDRESS`` from
    ``environ``, else None (a local cluster: ``ray.init()`` without an address, which joins one that
    ``ray start`` left on this machine, else starts one). Checked and bracketed by
    :func:`normalize_ray_address`.

    >>> from rlkit import PPOConfig
    >>> from rlkit.distributed.cluster import ray_address_for
    >>> cfg = PPOConfig.default()
    >>> ray_address_for(cfg, {}) is None, ray_address_for(cfg, {"RAY_ADDRESS": "auto"})
    (True, 'auto')
    >>> cfg.trainer.ray_address = "ray://[fd00::2]:10001"
    >>> ray_address_for(cfg, {"RAY_ADDRESS": "10.0.0.9:6379"})  # the config wins
    'ray://[fd00::2]:10001'
    >>> ray_address_for(PPOConfig.default(), {"RAY_ADDRESS": "10.0.0.2"})
    Traceback (most recent call last):
    ...
    ValueError: RAY_ADDRESS='10.0.0.2' is not a Ray address: no port. Use 'auto', 'HOST:PORT' or 'ray://HOST:PORT', e.g. '10.0.0.2:6379'
    """
    return _address_and_source(cfg, environ)[0]


def _import_ray():
    """``ray``, or an ImportError that says what needs it and how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ImportError("several ranks and the SGLang engine run as Ray workers; install Ray "
                          "(`pip install 'ray>=2.40'`) on every node") from e
    return ray


def connect(cfg, env_vars: dict | None = None, num_cpus: int | None = None, *,
            environ: Mapping[str, str] = os.environ):
    """Join the Ray cluster the config (or ``RAY_ADDRESS``) names, or start a local one; returns ``ray``.

    ``env_vars`` reach every worker process; by default this process's variables that start with
    :data:`FORWARDED_ENV_PREFIXES` (SGLang, NCCL, Hugging Face switches and ``PYTHONPATH``).

    Ray already initialised in this process (a notebook that called ``ray.init``, an earlier group):
    reused as it is. Otherwise ``ray.init(address=..., ignore_reinit_error=True,
    include_dashboard=False, runtime_env={"env_vars": env_vars or {}})`` with the address of
    :func:`ray_address_for` (``trainer.ray_address`` wins over ``RAY_ADDRESS``: the variable is hidden
    from ``ray.init``, which would otherwise let it replace ``auto``). Without an address a local
    cluster gets ``num_cpus`` (else ``ray_init.num_cpus`` when set, else all CPUs). Connecting to an
    address that does not answer raises a RuntimeError naming the address, where it came from and
    the fix; a malformed one raises ValueError before Ray starts. ``include_dashboard`` is left out
    for ``ray://`` (Ray Client takes no driver-side options).
    """
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    address, source = _address_and_source(cfg, environ)
    if env_vars is None:
        env_vars = {k: v for k, v in environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
    kwargs: dict = {"ignore_reinit_error": True, "runtime_env": {"env_vars": dict(env_vars)}}
    if address is None or not address.startswith(CLIENT_PREFIX):
        kwargs["include_dashboard"] = False  # Ray Client refuses driver-side options; the head has its own
    if address is None:
        if num_cpus is None:
            num_cpus = _key(cfg, "ray_init", "num_cpus")
        if num_cpus is not None:
            kwargs["num_cpus"] = int(num_cpus)
        with _ray_address_env_hidden(source):
            ray.init(**kwargs)
        return ray
    try:
        with _ray_address_env_hidden(source):
            ray.init(address=address, **kwargs)
    except Exception as e:
        try:  # a half-made connection would make the next ray.init "reuse" it
            ray.shutdown()
        except Exception:
            pass
        what = "no Ray cluster was found on this machine" if address == "auto" else \
            f"could not connect to the Ray cluster at {address}"
        raise RuntimeError(
            f"{what} ({source}={address!r}). Fix: {FIX}; then set {source} to the head's address "
            f"(HEAD:6379, or auto on a node of the cluster), or unset it to run on a local cluster. "
            f"Ray said: {type(e).__name__}: {str(e)[-800:]}") from e
    return ray


@contextlib.contextmanager
def _ray_address_env_hidden(source: str | None):
    """``ray.init`` lets ``RAY_ADDRESS`` replace an address of None or ``auto``; the address was
    resolved already (``trainer.ray_address`` wins), so the variable is hidden while Ray starts -
    unless it is where the address came from."""
    value = os.environ.get("RAY_ADDRESS") if source != "RAY_ADDRESS" else None
    if value is None:
        yield
        return
    del os.environ["RAY_ADDRESS"]
    try:
        yield
    finally:
        os.environ["RAY_ADDRESS"] = value


def describe_nodes(nodes: list[dict]) -> list[dict]:
    """``ray.nodes()`` entries that are alive, as ``{"node_id", "address", "CPU", "GPU", "resources"}``."""
    out = []
    for n in nodes:
        if not n.get("Alive", n.get("alive", False)):
            continue
        res = dict(n.get("Resources") or {})
        out.append({"node_id": str(n.get("NodeID", "?")), "address": str(n.get("NodeManagerAddress", "?")),
                    "CPU": float(res.get("CPU", 0)), "GPU": float(res.get("GPU", 0)), "resources": res})
    return out


def _listing(nodes: list[dict]) -> str:
    if not nodes:
        return "no alive nodes"
    return "; ".join(f"node {i} {n['address']} (id {n['node_id'][:8]}): CPU={n['CPU']:g}, GPU={n['GPU']:g}"
                     for i, n in enumerate(nodes))


def check_cluster_resources(resources: dict, nnodes: int, gpus_per_node: int, use_gpu: bool) -> None:
    """Refuse at once when the cluster cannot hold the group (Ray would keep it pending forever).

    >>> from rlkit.distributed.cluster import check_cluster_resources
    >>> check_cluster_resources({"CPU": 2.0, "memory": 8e9}, 1, 4, use_gpu=False)
    Traceback (most recent call last):
    ...
    RuntimeError: the worker group needs 1 node x 4 = 4 bundles of {'CPU': 1} (4 CPU) and the Ray cluster has CPU=2, memory=8e+09. ...
    """
    world = nnodes * gpus_per_node
    bundle = {"GPU": 1, "CPU": 1} if use_gpu else {"CPU": 1}
    need = {k: v * world for k, v in bundle.items()}
    short = {k: v for k, v in need.items() if resources.get(k, 0) < v}
    if short:
        shown = ", ".join(f"{k}={v:g}" for k, v in sorted(resources.items())
                          if k in ("CPU", "GPU", "memory") or k.startswith("accelerator_type")) or "nothing"
        needs = ", ".join(f"{v:g} {k}" for k, v in need.items())
        raise RuntimeError(
            f"the worker group needs {nnodes} node{'s' if nnodes != 1 else ''} x {gpus_per_node} = {world} bundles of "
            f"{bundle} ({needs}) and the Ray cluster has {shown}. Fix: lower trainer.nnodes / trainer.n_gpus_per_node, "
            "connect to a larger cluster (RAY_ADDRESS), or set trainer.device=cpu for a CPU run")


def check_nodes(nnodes: int, gpus_per_node: int, use_gpu: bool, nodes: list[dict] | None = None) -> list[dict]:
    """Refuse a cluster with fewer nodes or GPUs than ``nnodes x gpus_per_node`` (CPUs on a CPU run);
    the error lists every alive node with its CPU and GPU counts. ``nodes`` defaults to ``ray.nodes()``.
    A node counts when it alone could hold one node's share of the group
    (:func:`check_cluster_resources` with ``nnodes=1``: the same rule the
    group's bundles follow). Returns the alive nodes (:func:`describe_nodes`).

    >>> from rlkit.distributed.cluster import check_nodes
    >>> head = {"Alive": True, "NodeID": "a1" * 28, "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": 16.0}}
    >>> gpu = {"Alive": True, "NodeID": "b2" * 28, "NodeManagerAddress": "10.0.0.2",
    ...        "Resources": {"CPU": 64.0, "GPU": 8.0}}
    >>> len(check_nodes(1, 8, use_gpu=True, nodes=[head, gpu]))
    2
    >>> check_nodes(2, 8, use_gpu=True, nodes=[head, gpu])
    Traceback (most recent call last):
    ...
    RuntimeError: the worker group needs 2 nodes x 8 = 16 bundles of {'GPU': 1, 'CPU': 1} (16 GPU, 16 CPU) and the Ray cluster has CPU=80, GPU=8. ... Nodes: node 0 10.0.0.1 (id a1a1a1a1): CPU=16, GPU=0; node 1 10.0.0.2 (id b2b2b2b2): CPU=64, GPU=8
    """

    if nodes is None:
        nodes = _import_ray().nodes()
    alive = describe_nodes(nodes)
    total: dict = {}
    for n in alive:
        for k, v in n["resources"].items():
            total[k] = total.get(k, 0) + v
    try:
        check_cluster_resources(total, nnodes, gpus_per_node, use_gpu)
    except RuntimeError as e:
        raise RuntimeError(f"{e}. Nodes: {_listing(alive)}") from None

    def fits(n: dict) -> bool:
        try:
            check_cluster_resources(n["resources"], 1, gpus_per_node, use_gpu)
        except RuntimeError:
            return False
        return True

    usable = [n for n in alive if fits(n)]
    if len(usable) < nnodes:
        unit = "GPU" if use_gpu else "CPU"
        raise RuntimeError(
            f"trainer.nnodes={nnodes} needs {nnodes} nodes with {gpus_per_node} {unit} each "
            f"(trainer.n_gpus_per_node={gpus_per_node}) and the Ray cluster has {len(alive)} alive "
            f"node{'s' if len(alive) != 1 else ''}, {len(usable)} of them with enough: {_listing(alive)}. Fix: "
            f"`ray start --address=HEAD:6379` on more nodes, or lower trainer.nnodes / trainer.n_gpus_per_node")
    return alive


def dump_timeline(cfg) -> str | None:
    """Write Ray's timeline (Chrome trace JSON) to ``ray_init.timeline_json_file`` when it is set;
    returns the path written, or None. Call it while Ray still runs (before ``ray.shutdown()``)."""
    path = _key(cfg, "ray_init", "timeline_json_file")
    if not path:
        return None
    ray = _import_ray()
    if not ray.is_initialized():
        raise RuntimeError(f"ray_init.timeline_json_file={path!r}: Ray is not running, so there is no timeline "
                           "to write (call dump_timeline before ray.shutdown())")
    path = Path(os.path.expanduser(str(path)))
    path.parent.mkdir(parents=True, exist_ok=True)
    ray.timeline(filename=str(path))
    return str(path)
