"""The rollout benchmark's pieces that run without a GPU: the child-process command, the requests, the roofline."""
import argparse

from rlkit.bench.rollout import SHAPES, engine_extra, requests, roofline, side_command


def test_side_command_replaces_out_in_both_spellings_and_keeps_the_rest():
    for argv in (["--rounds", "2", "--out", "a.json", "--skip-hf"], ["--rounds", "2", "--out=a.json", "--skip-hf"]):
        cmd = side_command(argv, "direct_sglang", "/m", "/t/d.json")
        assert cmd[1:] == ["-m", "rlkit.bench.rollout", "--rounds", "2", "--skip-hf", "--side", "direct_sglang",
                           "--model-dir", "/m", "--out", "/t/d.json"]


def test_requests_are_the_same_in_every_process():
    args = argparse.Namespace(shape="0.5b", prompts=3, prompt_len=5, new_tokens=7)
    (a, n), (b, _) = requests(args), requests(args)
    assert a == b and n == 7 and [len(p) for p in a] == [5, 5, 5]
    assert all(100 <= t < SHAPES["0.5b"]["vocab_size"] - 100 for p in a for t in p)


def test_engine_extra_names_sglangs_decode_graph_size():
    assert engine_extra(argparse.Namespace(cuda_graph_max_bs=1024)) == {"cuda_graph_max_bs_decode": 1024}
    assert engine_extra(argparse.Namespace(cuda_graph_max_bs=None)) == {}


def test_roofline_by_hand_for_the_05b_shape():
    r = roofline("0.5b", batch=2, prompt_len=100, new_tokens=200, bandwidth=1e12)
    # embeddings 151936*896 + 24 layers * (896*64*(14*2 + 2*2) + 3*896*4864)
    params = 151936 * 896 + 24 * (896 * 64 * 32 + 3 * 896 * 4864)
    assert r["params"] == params == 493_961_216  # the figure the H200 run printed
    assert r["kv_bytes_per_token"] == 2 * 24 * 2 * 64 * 2 == 12288
    step = 2 * params + 2 * (100 + 100) * 12288  # weights + KV of 2 rows at an average context of 200
    assert abs(r["tokens_per_s_weights_and_kv"] - 2 * 1e12 / step) < 1e-6
    assert abs(r["tokens_per_s_weights_only"] - 2 * 1e12 / (2 * params)) < 1e-6


def test_sweep_rows_put_each_batch_against_its_own_roofline():
    from rlkit.bench.rollout import sweep_rows

    rows = sweep_rows([{"batch": b, "logprob": True, "seconds": 1.0} for b in (1, 4)], "0.5b", 100, 200, 1e12)
    assert [r["ms_per_step"] for r in rows] == [5.0, 5.0] and [r["tokens_per_s"] for r in rows] == [200.0, 800.0]
    for r in rows:
        assert r["of_roofline"] == r["tokens_per_s"] / roofline("0.5b", r["batch"], 100, 200, 1e12)[
            "tokens_per_s_weights_and_kv"]


class _FakeProfiledEngine:
    """Writes what SGLang's profiler writes with profile_by_stage: one gzipped chrome trace per stage."""

    def __init__(self):
        self.kw = None

    def start_profile(self, **kw):
        self.kw = kw

    def write_traces(self):
        import gzip
        import json
        from pathlib import Path

        stages = {"EXTEND": [("_fwd_kernel", 0, 400), ("nvjet_gemm", 400, 1000)],
                  "DECODE": [("nvjet_gemm", 0, 100), ("_fwd_grouped_kernel_stage1", 100, 400),
                             ("distribution_elementwise_grid_stride_kernel", 400, 500), ("nvjet_gemm", 900, 1000)]}
        for stage, ks in stages.items():
            ev = [{"ph": "X", "cat": "kernel", "name": n, "ts": float(a), "dur": float(b - a)} for n, a, b in ks]
            with gzip.open(Path(self.kw["output_dir"]) / f"id-TP-0-{stage}.trace.json.gz", "wt") as f:
                json.dump({"traceEvents": ev}, f)


def test_profile_generation_reads_each_stage_trace():
    from rlkit.bench.rollout import profile_generation

    eng = _FakeProfiledEngine()
    out = profile_generation(eng, eng.write_traces, steps=4)
    assert eng.kw["num_steps"] == 4 and eng.kw["profile_by_stage"] and eng.kw["activities"] == ["GPU"]
    assert set(out) == {"prefill", "decode"}
    d = out["decode"]
    assert d["ms_per_step"] == 1e3 * 1000e-6 / 4  # the trace spans 1000 us over 4 steps
    assert abs(d["busy_fraction"] - 0.6) < 1e-9  # 600 of 1000 us
    assert {c: round(v["s"] * 1e6) for c, v in d["by_category"].items()} == {"attention": 300, "gemm": 200,
                                                                            "sampling": 100}
    assert out["prefill"]["busy_fraction"] == 1.0


def test_profile_generation_fails_loudly_without_a_trace():
    import pytest

    from rlkit.bench.rollout import profile_generation

    with pytest.raises(RuntimeError, match="wrote no trace"):
        profile_generation(_FakeProfiledEngine(), lambda: None, steps=2)


def test_profile_steps_needs_a_sweep():
    import pytest

    from rlkit.bench.rollout import main

    with pytest.raises(SystemExit, match="--sweep"):
        main(["--profile-steps", "10"])
