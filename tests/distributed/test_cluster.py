"""rlkit.distributed.cluster: which Ray address, connecting with a named error, counting nodes.

The multi-node tests run a 2-node cluster on this one machine (``ray.cluster_utils.Cluster``: a head
and one more raylet, 2 CPUs each). The PPO step compares 2 ranks, one on each node, with 1 rank
within test_group_cpu's tolerance (TOL = 1e-5; the reasoning is in that module's docstring).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from rlkit import PPOConfig
from rlkit.distributed.cluster import (FORWARDED_ENV_PREFIXES, check_nodes, connect, dump_timeline, normalize_ray_address,
                                      ray_address_for)

REPO = Path(__file__).resolve().parents[2]


def cfg_with(**overrides) -> PPOConfig:
    return PPOConfig.from_overrides([f"{k}={v}" for k, v in overrides.items()])


# ----------------------------------------------------------------------------- pure: the address
def test_address_precedence():
    env = {"RAY_ADDRESS": "10.0.0.9:6379"}
    assert ray_address_for(cfg_with(), {}) is None  # nothing set: a local cluster
    assert ray_address_for(cfg_with(), env) == "10.0.0.9:6379"
    assert ray_address_for(cfg_with(**{"trainer.ray_address": "auto"}), env) == "auto"  # the config wins
    assert ray_address_for(cfg_with(**{"trainer.ray_address": "ray://head:10001"}), env) == "ray://head:10001"
    assert ray_address_for(cfg_with(), {"RAY_ADDRESS": "  "}) is None  # empty = unset
    assert ray_address_for(cfg_with(), {"RAY_ADDRESS": "local"}) is None  # Ray's word for a new local cluster
    assert ray_address_for({"trainer": {}}, env) == "10.0.0.9:6379"  # a config from before the key existed


@pytest.mark.parametrize("given, expected", [
    ("[fd00::2]:6379", "[fd00::2]:6379"),
    ("ray://[fd00::2]:10001", "ray://[fd00::2]:10001"),
    ("[fe80::1%eth0]:6379", "[fe80::1%eth0]:6379"),
    ("Ray://head-0:10001", "ray://head-0:10001"),
    (" 10.0.0.2:6379\n", "10.0.0.2:6379"),
    ("AUTO", "auto"),
])
def test_ipv6_is_bracketed_and_forms_are_canonical(given, expected):
    assert normalize_ray_address(given) == expected
    assert ray_address_for(cfg_with(), {"RAY_ADDRESS": given}) == expected


@pytest.mark.parametrize("bad, why, example", [
    ("fd00::2:6379", "an IPv6 host needs brackets", "[fd00::2]:6379"),
    ("ray://fd00::2:10001", "an IPv6 host needs brackets", "ray://[fd00::2]:10001"),
    ("[fd00::2]", "no port", "[fd00::2]:6379"),
    ("head-0", "no port", "head-0:6379"),
    ("ray://head-0", "no port", "ray://head-0:10001"),
    ("http://head-0:6379", "only 'ray://' may come before the host", "ray://10.0.0.2:10001"),
    ("head-0:6379/x", "nothing after the port", "ray://10.0.0.2:10001"),
    ("head-0:port", "port must be an int", "10.0.0.2:6379"),
    ("head-0:0", "port 0", "head-0:6379"),
    (":6379", "expected 'host:port'", "10.0.0.2:6379"),
])
def test_bad_address_names_value_and_example(bad, why, example):
    for cfg, env, source in ((cfg_with(**{"trainer.ray_address": f"'{bad}'"}), {}, "trainer.ray_address"),
                             (cfg_with(), {"RAY_ADDRESS": bad}, "RAY_ADDRESS")):
        with pytest.raises(ValueError) as e:
            ray_address_for(cfg, env)
        msg = str(e.value)
        assert msg.startswith(f"{source}={bad!r} is not a Ray address: ") and why in msg, msg
        assert msg.endswith(f"e.g. {example!r}") and "'auto', 'HOST:PORT' or 'ray://HOST:PORT'" in msg, msg
        if "[" in example:  # the suggestion is itself valid
            assert normalize_ray_address(example) == example


def test_check_nodes_counts_nodes_that_hold_a_share():
    """Pure (a ray.nodes() list given): a CPU-only head does not count as a GPU node, dead nodes are ignored."""
    head = {"Alive": True, "NodeID": "a" * 56, "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": 8.0}}
    gpu = [{"Alive": True, "NodeID": f"{i}" * 56, "NodeManagerAddress": f"10.0.0.{i}",
            "Resources": {"CPU": 32.0, "GPU": 4.0}} for i in (2, 3)]
    dead = {"Alive": False, "NodeID": "d" * 56, "NodeManagerAddress": "10.0.0.9", "Resources": {"CPU": 32.0, "GPU": 4}}
    assert len(check_nodes(2, 4, True, nodes=[head, *gpu, dead])) == 3
    big = {**gpu[0], "Resources": {"CPU": 32.0, "GPU": 8.0}}
    with pytest.raises(RuntimeError, match=r"trainer.nnodes=2 needs 2 nodes with 4 GPU each .* has 2 alive nodes, "
                                           r"1 of them with enough: node 0 10.0.0.1 \(id aaaaaaaa\): CPU=8, GPU=0; "
                                           r"node 1 10.0.0.2 \(id 22222222\): CPU=32, GPU=8\. Fix: `ray start "
                                           r"--address=HEAD:6379` on more nodes"):
        check_nodes(2, 4, True, nodes=[head, big, dead])  # 8 GPUs in total, but on 1 node
    with pytest.raises(RuntimeError, match=r"needs 3 nodes x 4 = 12 bundles .* cluster has CPU=72, GPU=8\. .*"
                                           r"Nodes: node 0 10.0.0.1"):
        check_nodes(3, 4, True, nodes=[head, *gpu])  # too few GPUs: group.py's rule, with the node list
    with pytest.raises(RuntimeError, match="no alive nodes"):
        check_nodes(1, 1, False, nodes=[dead])


# ----------------------------------------------------------------------------- connecting
BAD_CONNECT = textwrap.dedent("""
    import os, time
    from rlkit import PPOConfig
    from rlkit.distributed.cluster import connect
    cfg = PPOConfig.from_overrides([a for a in os.environ["OVERRIDES"].split() if a])
    t = time.monotonic()
    try:
        connect(cfg)
    except RuntimeError as e:
        print("RuntimeError:", e)
    print("seconds:", round(time.monotonic() - t, 1))
""")


@pytest.mark.parametrize("overrides, env_address, source", [
    ("trainer.ray_address=127.0.0.1:9", None, "trainer.ray_address"),
    ("", "127.0.0.1:9", "RAY_ADDRESS"),
])
def test_connect_to_a_dead_address_names_it(overrides, env_address, source):
    """Nothing listens on port 9 (discard). In a fresh process, with Ray's GCS connection timeouts
    shortened (Ray's defaults retry for many minutes; the settings live for the whole process, so
    they must not leak into this one)."""
    pytest.importorskip("ray")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"OVERRIDES": overrides, "PYTHONPATH": str(REPO), "RAY_py_gcs_connect_timeout_s": "2",
                "RAY_gcs_server_port_wait_time_s": "1", "RAY_gcs_rpc_server_connect_timeout_s": "1"})
    if env_address:
        env["RAY_ADDRESS"] = env_address
    out = subprocess.run([sys.executable, "-c", BAD_CONNECT], env=env, capture_output=True, text=True, timeout=120,
                         cwd=REPO).stdout
    assert (f"RuntimeError: could not connect to the Ray cluster at 127.0.0.1:9 ({source}='127.0.0.1:9'). Fix: "
            "start the cluster first: `ray start --head --port=6379` on the head node, then "
            "`ray start --address=HEAD:6379` on every other node") in out, out
    assert "Ray said: ConnectionError" in out, out
    assert float(out.rsplit("seconds:", 1)[1]) < 60, out


def test_connect_passes_what_ray_init_needs(monkeypatch):
    """A recording ray.init: the resolved address, num_cpus only for a local cluster, no dashboard
    option for Ray Client, and RAY_ADDRESS hidden unless it is the source (ray.init would let it
    replace None or 'auto')."""
    ray = pytest.importorskip("ray")
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append((kw, os.environ.get("RAY_ADDRESS"))))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    for k in [k for k in os.environ if k.startswith(FORWARDED_ENV_PREFIXES)]:  # this machine's (e.g. CI's RLKIT_*)
        monkeypatch.delenv(k)  # would be forwarded by the calls that read os.environ
    env = {"RLKIT_X": "1"}
    connect(cfg_with(**{"trainer.ray_address": "auto"}), env_vars=env)
    connect(cfg_with(**{"trainer.ray_address": "ray://[fd00::2]:10001"}))
    connect(cfg_with())
    connect(cfg_with(**{"ray_init.num_cpus": 3}), environ={})
    connect(cfg_with(**{"ray_init.num_cpus": 3}), num_cpus=2, environ={})
    assert calls == [
        ({"address": "auto", "ignore_reinit_error": True, "include_dashboard": False,
          "runtime_env": {"env_vars": env}}, None),
        ({"address": "ray://[fd00::2]:10001", "ignore_reinit_error": True, "runtime_env": {"env_vars": {}}}, None),
        ({"address": "10.0.0.9:6379", "ignore_reinit_error": True, "include_dashboard": False,
          "runtime_env": {"env_vars": {}}}, "10.0.0.9:6379"),
        ({"ignore_reinit_error": True, "include_dashboard": False, "runtime_env": {"env_vars": {}}, "num_cpus": 3},
         None),
        ({"ignore_reinit_error": True, "include_dashboard": False, "runtime_env": {"env_vars": {}}, "num_cpus": 2},
         None),
    ]
    assert os.environ["RAY_ADDRESS"] == "10.0.0.9:6379"  # restored


def test_malformed_address_fails_before_ray_starts():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray already runs in this process")
    with pytest.raises(ValueError, match=r"RAY_ADDRESS='head-0' is not a Ray address: no port"):
        connect(cfg_with(), environ={"RAY_ADDRESS": "head-0"})
    assert not ray.is_initialized()


# ----------------------------------------------------------------------------- a 2-node cluster on this machine
@pytest.fixture(scope="module")
def cluster():
    """Head and one more node, 2 CPUs each, joined through connect() with trainer.ray_address."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": 150 * 1024**2})
    try:
        c.add_node(num_cpus=2, object_store_memory=150 * 1024**2)
        c.wait_for_nodes()
        got = connect(cfg_with(**{"trainer.ray_address": c.address}), env_vars={"RLKIT_CLUSTER_TEST": "joined"},
                      environ={})
        assert got is ray and ray.is_initialized()
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def test_connect_joins_the_cluster_and_forwards_env(cluster):
    import ray

    @ray.remote(num_cpus=0)
    def read_env():
        return os.environ.get("RLKIT_CLUSTER_TEST")

    assert ray.get(read_env.remote(), timeout=60) == "joined"
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    # already initialised: reused as it is, whatever the config names (no second ray.init)
    before = ray.get_runtime_context().gcs_address
    assert connect(cfg_with(**{"trainer.ray_address": "10.255.255.1:6379"})) is ray
    assert ray.get_runtime_context().gcs_address == before


def test_check_nodes_on_two_nodes(cluster):
    nodes = check_nodes(2, 1, use_gpu=False)
    assert len(nodes) == 2 and all(n["CPU"] == 2 for n in nodes)
    check_nodes(1, 2, use_gpu=False)  # one node's 2 CPUs hold a 2-rank node share
    with pytest.raises(RuntimeError) as e:
        check_nodes(3, 1, use_gpu=False)  # 3 CPUs of 4 would do, but there are only 2 nodes
    msg = str(e.value)
    ids = [n["node_id"][:8] for n in nodes]
    assert msg.startswith("trainer.nnodes=3 needs 3 nodes with 1 CPU each (trainer.n_gpus_per_node=1) and the Ray "
                          "cluster has 2 alive nodes, 2 of them with enough: node 0 "), msg
    assert all(f"(id {i}): CPU=2, GPU=0" in msg for i in ids), msg
    with pytest.raises(RuntimeError, match=r"needs 1 node x 1 = 1 bundles of \{'GPU': 1, 'CPU': 1\} .*Nodes: node 0 .*"
                                           r"CPU=2, GPU=0; node 1 .*CPU=2, GPU=0"):
        check_nodes(1, 1, use_gpu=True)  # a GPU run on a cluster without GPUs


def test_dump_timeline(cluster, tmp_path):
    import ray

    ray.get(ray.remote(num_cpus=0)(lambda: 1).remote(), timeout=60)
    assert dump_timeline(cfg_with()) is None  # not set: nothing written
    path = tmp_path / "trace" / "timeline.json"
    assert dump_timeline(cfg_with(**{"ray_init.timeline_json_file": path})) == str(path)
    assert isinstance(json.loads(path.read_text()), list)


def test_ppo_step_on_two_nodes_equals_one_rank(cluster, tmp_path_factory):
    """One rank on each node (a STRICT_SPREAD filler holds 1 CPU of each node, so the two single-bundle
    STRICT_PACK placement groups cannot share one): log-probs, one actor and one critic update give
    1 rank's parameters and metrics within TOL."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_group_cpu import TOL, config, make_batch, max_diff, one_step
    from tiny import char_tokenizer, make_tiny_model

    from rlkit.distributed.group import WorkerGroup

    model_dir = make_tiny_model(tmp_path_factory.mktemp("m"), char_tokenizer())
    batch = make_batch()
    filler = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    ray.get(filler.ready(), timeout=60)
    try:
        t0 = time.monotonic()
        one = one_step(config(model_dir, 1), batch)
        t1 = time.monotonic()
        cfg = PPOConfig.from_overrides(["trainer.nnodes=2"], base=config(model_dir, 1))
        group = WorkerGroup(cfg, timeout_s=60, grace_s=10)
        try:
            nodes = [placement_group_table(pg)["bundles_to_node_id"][0] for pg in group.placement_groups]
            two = {"log_probs": group.compute_log_prob(batch), "actor": group.update_actor(batch, step=1),
                   "critic": group.update_critic(batch, step=1), "state": group.call_rank0("full_state_dict")}
        finally:
            group.shutdown()
        print(f"1 rank: {t1 - t0:.1f} s; 2 ranks on 2 nodes: {time.monotonic() - t1:.1f} s")
    finally:
        remove_placement_group(filler)
    assert group.world_size == 2 and len(set(nodes)) == 2, nodes  # one rank per node
    assert (one["log_probs"]["log_probs"] - two["log_probs"]["log_probs"]).abs().max().item() < 1e-5
    for role in ("actor", "critic"):
        diff = max_diff(one["state"][role], two["state"][role])
        print(f"2 nodes vs 1 rank: {role} max |param diff| = {diff:.2e}")
        assert diff < TOL, (role, diff)
        for key, v in one[role].items():
            if "clipfrac" in key:  # float noise flips single tokens at the clip boundary (see test_group_cpu)
                assert abs(two[role][key] - v) <= 0.1, key
            else:
                assert two[role][key] == pytest.approx(v, rel=1e-5, abs=1e-6), key
    assert torch.isfinite(torch.tensor(one["actor"]["actor/grad_norm"]))
