"""SGLang TP free-memory balance: the rule, the numbers, the evidence per cause and the advice -
hand-made readings only (the 2-GPU failure seen on an H100 host: 77.14 vs 57.14 GiB free)."""
from __future__ import annotations

import json
import sys
import types
import warnings

import pytest

from rlkit.diagnostics.balance import (
    BalanceReport,
    TPMemoryImbalanceError,
    TPMemoryImbalanceWarning,
    balance_report,
    check_before_engine,
    tp_memory_imbalance,
)
from rlkit.diagnostics.memory import GPUMemory, MemorySnapshot, ProcessMemory

GiB = 2**30
SEEN = [int(77.14 * GiB), int(57.14 * GiB)]  # free per rank when another process held 20 GiB on GPU 1


def gpu(index, free_gib, procs=(), alloc_gib=None, reserved_gib=None, total_gib=80, uuid=None):
    return GPUMemory(index=index, name="NVIDIA H100 80GB HBM3", uuid=uuid or f"GPU-{index:04d}", total=total_gib * GiB,
                     used=int((total_gib - free_gib) * GiB), free=int(free_gib * GiB),
                     processes=[ProcessMemory(pid, name, int(b * GiB)) for pid, name, b in procs],
                     torch_allocated=None if alloc_gib is None else int(alloc_gib * GiB),
                     torch_reserved=None if reserved_gib is None else int(reserved_gib * GiB))


def snap(rank, gpus, pid=None, t=1000.0, node="node0", source="nvml"):
    return MemorySnapshot(time=t, node=node, rank=rank, pid=pid or 1000 + rank, host_rss=GiB, gpus=gpus,
                          source=source, notes=[])


def seen_snapshots():
    """Two workers, one GPU each; a stranger (pid 4242) holds 20 GiB on GPU 1."""
    return [
        snap(0, [gpu(0, 77.14, procs=[(1000, "python", 0.5)], alloc_gib=0.0, reserved_gib=0.0,
                     uuid="GPU-aaaa1111-2222")], pid=1000),
        snap(1, [gpu(0, 57.14, procs=[(1001, "python", 0.5), (4242, "stress", 20.0)], alloc_gib=0.0,
                     reserved_gib=0.0, uuid="GPU-bbbb3333-4444")], pid=1001),
    ]


# --------------------------------------------------------------------------------------- the rule
def test_imbalance_rule_matches_sglang():
    # the seen failure: rank 0 free 77.14, rank 1 free 57.14 -> 57.14 < 0.9 * 77.14 = 69.43 on rank 0 only
    assert tp_memory_imbalance([int(77.14 * GiB), int(57.14 * GiB)]) == [0]
    # 10% difference is the edge: min 90 vs 0.9 * 100 = 90 is not "below"
    assert tp_memory_imbalance([100 * GiB, 90 * GiB]) == []
    assert tp_memory_imbalance([100 * GiB, 89 * GiB]) == [0]
    # every rank holding more than min/0.9 fails
    assert tp_memory_imbalance([50 * GiB, 80 * GiB, 80 * GiB, 52 * GiB]) == [1, 2]
    assert tp_memory_imbalance([]) == []


def test_seen_failure_numbers():
    r = balance_report(SEEN)
    assert not r.ok and r.failing == [0]
    g = r.groups[0]
    assert g.ranks == [0, 1] and g.failing == [0] and g.short_ranks == [1] and g.min_free == SEEN[1]
    assert g.ratios[0] == pytest.approx(57.14 / 77.14, abs=1e-6) and g.ratios[1] == 1.0
    # rank 0 fails: 57.14 < 0.9 * 77.14 = 69.43; short by 69.426 - 57.14 = 12.286 GiB
    assert g.threshold_bytes[0] / GiB == pytest.approx(69.426, abs=1e-3)
    assert g.missing_gib == {0: pytest.approx(12.286, abs=1e-3)}
    assert f"{g.missing_gib[0]:.2f}" == "12.29"


def test_balanced_passes():
    r = balance_report([int(78.66 * GiB), int(77.9 * GiB)])
    assert r.ok and r.failing == [] and r.advice == []
    assert r.groups[0].missing_gib == {} and r.groups[0].short_ranks == [1]
    # the edge: 90 vs 0.9 x 100 is not below
    assert balance_report({0: 100 * GiB, 1: 90 * GiB}).ok
    assert not balance_report({0: 100 * GiB, 1: 89 * GiB}).ok


def test_four_ranks_two_groups():
    free = [80 * GiB, 79 * GiB, 80 * GiB, 60 * GiB]
    r = balance_report(free, tp_groups=[[0, 1], [2, 3]])
    g0, g1 = r.groups
    assert g0.ok and g0.ranks == [0, 1]
    assert not g1.ok and g1.ranks == [2, 3] and g1.failing == [2] and g1.short_ranks == [3]
    assert g1.missing_gib == {2: pytest.approx(12.0)}  # 0.9 * 80 - 60
    assert r.failing == [2] and not r.ok
    # one group of all four (the default): every rank with more than 60/0.9 = 66.7 GiB fails
    whole = balance_report(free)
    assert whole.groups[0].failing == [0, 1, 2]
    assert whole.groups[0].missing_gib[1] == pytest.approx(0.9 * 79 - 60)
    with pytest.raises(ValueError, match=r"rank\(s\) \[7\]"):
        balance_report(free, tp_groups=[[0, 7]])


def test_one_snapshot_with_several_gpus_is_one_rank_per_gpu():
    s = snap(0, [gpu(1, 57.14), gpu(0, 77.14)])  # listed out of order: ranks follow the GPU index
    r = balance_report([s])
    assert [x.gpu for x in r.ranks] == [0, 1] and r.groups[0].failing == [0] and r.groups[0].short_ranks == [1]
    assert r.groups[0].labels == ["node0:GPU 0", "node0:GPU 1"]


def test_snapshot_dicts_and_latest_per_rank():
    old = snap(1, [gpu(0, 77.14)], t=10.0)
    snaps = [s.to_dict() for s in seen_snapshots()] + [old.to_dict()]
    r = balance_report(snaps)
    assert r.groups[0].failing == [0]  # the older, balanced reading of rank 1 is ignored
    assert any("latest" in n for n in r.notes)


def test_no_gpu_readings_is_an_error():
    cpu = MemorySnapshot(time=1.0, node="cpu", rank=0, pid=1, host_rss=1, gpus=[], source="none",
                         notes=["no GPU readings: ..."])
    with pytest.raises(ValueError, match="no GPU readings"):
        balance_report([cpu])


# ---------------------------------------------------------------------------------------- evidence
def test_other_process_on_short_gpu():
    r = balance_report(seen_snapshots())
    e = r.evidence_for("other_processes")
    assert e.found is True
    assert any("pid 4242" in d and "stress" in d and "20.00 GiB" in d for d in e.details)
    assert e.data[1][0]["pid"] == 4242 and e.data[1][0]["gib"] == pytest.approx(20.0)
    assert any("4242" in a and "node0:GPU 0 (GPU-bbbb3333)" in a for a in r.advice)
    # each worker sees its GPU as index 0: the UUID tells them apart
    assert r.groups[0].labels == ["node0:GPU 0 (GPU-aaaa1111)", "node0:GPU 0 (GPU-bbbb3333)"]
    assert r.evidence_for("torch_memory").found is False
    assert r.evidence_for("offload").found is None and r.evidence_for("load_timing").found is None


def test_other_rlkit_worker_is_named():
    snaps = seen_snapshots()
    snaps[1].gpus[0].processes.append(ProcessMemory(1000, "python", 3 * GiB))  # rank 0's worker also on GPU 1
    e = balance_report(snaps).evidence_for("other_processes")
    assert any("pid 1000 (python, rlkit rank 0)" in d for d in e.details)


def test_no_process_list_means_no_data():
    r = balance_report(SEEN)
    e = r.evidence_for("other_processes")
    assert e.found is None and "nvidia-ml-py" in e.summary
    assert any("nvidia-smi" in a for a in r.advice)


def test_torch_memory_spread():
    snaps = [snap(0, [gpu(0, 77.0, alloc_gib=0.5, reserved_gib=1.0)]),
             snap(1, [gpu(0, 57.0, alloc_gib=12.0, reserved_gib=20.0)])]
    r = balance_report(snaps)
    e = r.evidence_for("torch_memory")
    assert e.found is True
    assert e.data[0]["reserved_spread_gib"] == pytest.approx(19.0)
    assert e.data["ranks"][1]["cached_gib"] == pytest.approx(8.0)
    assert any("reserved spread 19.00 GiB" in d for d in e.details)
    text = " ".join(r.advice)
    assert "torch.cuda.empty_cache() on rank(s) [1]" in text
    assert "start the SGLang engine before loading the training state" in text
    assert "sleep the engine" in text


def test_offload_difference_flagged():
    cfg = {0: {"param_offload": True, "optimizer_offload": True},
           1: {"param_offload": False, "optimizer_offload": True}}
    r = balance_report(SEEN, config=cfg)
    e = r.evidence_for("offload")
    assert e.found is True and "param_offload" in e.data and "optimizer_offload" not in e.data
    assert any("param_offload differs" in d and "True on rank(s) [0]" in d and "False on rank(s) [1]" in d
               for d in e.details)
    assert any("same offload settings on every rank" in a for a in r.advice)
    same = balance_report(SEEN, config={0: {"param_offload": True}, 1: {"param_offload": True}})
    assert same.evidence_for("offload").found is False


def test_offload_from_one_run_config():
    from rlkit.config import PPOConfig

    cfg = PPOConfig.from_overrides(["actor_rollout_ref.actor.fsdp_config.param_offload=True",
                                    "actor_rollout_ref.rollout.gpu_memory_utilization=0.6"])
    r = balance_report(SEEN, config=cfg)
    e = r.evidence_for("offload")
    assert e.found is False and e.data["shared"]["actor_rollout_ref.actor.fsdp_config.param_offload"] is True
    assert any("roles differ in param_offload" in d for d in e.details)  # actor True, ref False: noted only
    assert any("gpu_memory_utilization (now 0.6)" in a for a in r.advice)
    # per-rank run configs are compared key by key
    other = PPOConfig.from_overrides([])
    e2 = balance_report(SEEN, config={0: cfg, 1: other}).evidence_for("offload")
    assert e2.found is True and "actor_rollout_ref.actor.fsdp_config.param_offload" in e2.data


def test_load_time_spread_flagged():
    r = balance_report(SEEN, load_times={0: 1000.0, 1: 1042.5})
    e = r.evidence_for("load_timing")
    assert e.found is True and e.data[0]["spread_s"] == pytest.approx(42.5)
    assert any("rank 1 +42.5 s" in d for d in e.details)
    assert any("barrier" in a for a in r.advice)
    close = balance_report(SEEN, load_times={0: 1000.0, 1: 1002.0}).evidence_for("load_timing")
    assert close.found is False


def test_advice_always_has_last_resorts_when_failing():
    text = "\n".join(balance_report(SEEN).advice)
    assert "actor_rollout_ref.rollout.gpu_memory_utilization" in text
    assert "actor_rollout_ref.rollout.tp_memory_check=warn" in text and "smallest free memory (57.14 GiB)" in text


# ------------------------------------------------------------------------------------- presentation
def test_text_table_has_the_numbers():
    text = str(balance_report(seen_snapshots()))
    for s in ("FAIL", "77.14", "57.14", "69.43", "12.29", "0.741", "pid 4242", "Advice:", "node0:GPU 0"):
        assert s in text, s
    assert "OK" in str(balance_report([80 * GiB, 79 * GiB]))


def test_html_highlights_failing_and_escapes():
    snaps = seen_snapshots()
    snaps[1].gpus[0].processes[1].name = "<script>alert(1)</script>"
    page = balance_report(snaps)._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.count('class="failing"') == 1 and "background:#fdd" in page
    for s in ("77.14", "57.14", "69.43", "12.29"):
        assert s in page


def test_to_dict_is_json_able():
    r = balance_report(seen_snapshots(), config={0: {"param_offload": True}, 1: {"param_offload": False}},
                       load_times={0: 1.0, 1: 30.0})
    d = json.loads(json.dumps(r.to_dict()))
    assert d["ok"] is False and d["ratio"] == 0.9
    g = d["groups"][0]
    assert g["failing"] == [0] and g["short_ranks"] == [1] and g["missing_gib"]["0"] == pytest.approx(12.286, 1e-3)
    assert g["free_gib"] == pytest.approx([77.14, 57.14], abs=1e-6)
    assert [e["cause"] for e in d["evidence"]] == ["other_processes", "torch_memory", "offload", "load_timing"]
    assert d["ranks"][1]["other_processes"][0]["pid"] == 4242


def test_plot_calls_viz(monkeypatch):
    seen = {}
    fake = types.ModuleType("rlkit.viz.plots")

    def plot_balance(data, ax=None):
        seen.update(data=data, ax=ax)
        return "axes"

    fake.plot_balance = plot_balance
    monkeypatch.setitem(sys.modules, "rlkit.viz.plots", fake)
    r = balance_report(SEEN)
    assert r.plot(ax="my-ax") == "axes"
    assert seen["ax"] == "my-ax" and seen["data"] == r.to_dict()


# ---------------------------------------------------------------------------------------- pre-flight
def test_check_before_engine_error():
    with pytest.raises(TPMemoryImbalanceError) as info:
        check_before_engine(SEEN, "error")
    assert isinstance(info.value, RuntimeError)
    assert "12.29" in str(info.value) and str(info.value) == str(info.value.report)


def test_check_before_engine_warn():
    with pytest.warns(TPMemoryImbalanceWarning, match="12.29"):
        r = check_before_engine({0: SEEN[0], 1: SEEN[1]}, "warn")
    assert isinstance(r, BalanceReport) and not r.ok


def test_check_before_engine_off_and_balanced():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_before_engine(SEEN, "off") is None
        r = check_before_engine([80 * GiB, 79 * GiB], "error")
        assert r.ok
        assert check_before_engine(seen_snapshots()[:1], "error").ok  # one rank: nothing to compare
    with pytest.raises(ValueError, match="error, warn or off"):
        check_before_engine(SEEN, "maybe")


# ------------------------------------------------------------------------ which GPU is short, which rank raises
def recorded_tp2():
    """The recorded TP=2 failure: 79.18 GiB free on GPU 0, 54.57 GiB on GPU 1 (another process holds 24.6 GiB)."""
    return [snap(0, [gpu(0, 79.175537109375, alloc_gib=0.0, reserved_gib=0.0),
                     gpu(1, 54.5743408203125, procs=[(696, "python", 24.595703125)], alloc_gib=0.0,
                         reserved_gib=0.0)], pid=2893)]


def test_gpu1_short_rank0_raises_text():
    r = balance_report(recorded_tp2(), tp_groups=[[0, 1]])
    g = r.groups[0]
    # 0.9 x 79.1755 = 71.2580 GiB required; 71.2580 - 54.5743 = 16.6836 GiB short
    assert g.failing == [0] and g.short_ranks == [1] and g.most_free_ranks == [0]
    assert g.required_bytes / GiB == pytest.approx(71.25798, abs=1e-4)
    assert g.short_by_gib == pytest.approx(16.68364, abs=1e-4)
    text = str(r)
    lines = text.splitlines()
    assert lines[0] == ("TP memory balance: FAIL - node0:GPU 1 (rank 1) is short by 16.68 GiB; "
                        "SGLang raises on rank 0 (node0:GPU 0)")
    assert ("  node0:GPU 1 (rank 1) is short: 54.57 GiB free, 16.68 GiB less than the 71.26 GiB (0.9 x 79.18) "
            "that rank 0 requires.") in lines
    assert ("  SGLang raises on rank 0 (node0:GPU 0), the rank with the most free memory, because the group's "
            "minimum free memory (54.57 GiB, on node0:GPU 1) is below 0.9 x its own 79.18 GiB = 71.26 GiB.") in lines
    row0 = next(x for x in lines if x.strip().startswith("0  node0:GPU 0"))
    row1 = next(x for x in lines if x.strip().startswith("1  node0:GPU 1"))
    assert "RAISES" in row0 and "short" not in row0.lower() and "71.26" in row0
    assert "SHORT by 16.68 GiB" in row1 and "least free" in row1
    # the GPU with plenty of memory is never called short, anywhere in the report
    for line in lines:
        if "short" in line.lower() and "GPU 0" in line:
            assert "GPU 1" in line and line.index("GPU 1") < line.lower().index("short"), line
    assert "FAIL, short by" not in text  # the old wording that put the shortfall on rank 0


def test_gpu0_short_rank1_raises():
    r = balance_report([int(40 * GiB), int(70 * GiB)])  # 0.9 x 70 = 63 GiB required, 63 - 40 = 23 GiB short
    g = r.groups[0]
    assert g.failing == [1] and g.short_ranks == [0] and g.short_by_gib == pytest.approx(23.0)
    assert g.missing_gib == {1: pytest.approx(23.0)}
    lines = str(r).splitlines()
    assert lines[0] == "TP memory balance: FAIL - the GPU of rank 0 is short by 23.00 GiB; SGLang raises on rank 1"
    assert ("  The GPU of rank 0 is short: 40.00 GiB free, 23.00 GiB less than the 63.00 GiB (0.9 x 70.00) that "
            "rank 1 requires.") in lines
    assert any(x.startswith("  SGLang raises on rank 1, the rank with the most free memory") and
               "(40.00 GiB, on the GPU of rank 0) is below 0.9 x its own 70.00 GiB = 63.00 GiB" in x for x in lines)
    row0 = next(x for x in lines if x.strip().startswith("0  GPU of rank 0"))
    row1 = next(x for x in lines if x.strip().startswith("1  GPU of rank 1"))
    assert "SHORT by 23.00 GiB" in row0 and "RAISES" in row1 and "SHORT" not in row1


def test_several_raising_ranks_one_short_gpu():
    r = balance_report([80 * GiB, 79 * GiB, 80 * GiB, 60 * GiB])  # needs 0.9 x 80 = 72 on rank 3: 12 short
    g = r.groups[0]
    assert g.failing == [0, 1, 2] and g.short_ranks == [3] and g.most_free_ranks == [0, 2]
    assert g.short_by_gib == pytest.approx(12.0)
    text = str(r)
    assert "the GPU of rank 3 is short by 12.00 GiB; SGLang raises on rank 0, rank 1 and rank 2" in text
    assert "72.00 GiB (0.9 x 80.00) that ranks 0 and 2 require." in text
    assert "(72.00, 71.10, 72.00 GiB respectively)" in text


def test_html_and_dict_name_short_gpu_and_raising_rank():
    r = balance_report(recorded_tp2(), tp_groups=[[0, 1]])
    page = r._repr_html_()
    assert "node0:GPU 1 (rank 1) is short by 16.68 GiB; SGLang raises on rank 0 (node0:GPU 0)" in page
    assert "node0:GPU 1 (rank 1) is short: 54.57 GiB free, 16.68 GiB less than the 71.26 GiB" in page
    rows = page.split("<tr")[2:]  # after the header row
    assert rows[0].startswith(' class="failing"') and "RAISES" in rows[0] and "SHORT" not in rows[0]
    assert rows[1].startswith(' class="short"') and "SHORT by 16.68 GiB" in rows[1]
    g = r.to_dict()["groups"][0]
    assert g["short_by_gib"] == pytest.approx(16.68364, abs=1e-4)
    assert g["required_gib"] == pytest.approx(71.25798, abs=1e-4)
    assert g["explanation"] == r.groups[0].explanation() and len(g["explanation"]) == 3
    ok = balance_report([80 * GiB, 79 * GiB])
    assert ok.groups[0].explanation() == [] and str(ok).splitlines()[0] == "TP memory balance: OK"
    assert "SHORT" not in str(ok) and "RAISES" not in str(ok)
