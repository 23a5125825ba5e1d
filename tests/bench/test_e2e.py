"""rlkit.bench.e2e: the summary over steps, and the whole benchmark on a CPU (tiny model, hf rollout, 2 steps)
through main_ppo's code path (its FLOP counts: tests/diagnostics/test_flops.py)."""
from __future__ import annotations

import json

import pytest

from rlkit.bench import e2e

QWEN05 = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
              intermediate_size=4864, vocab_size=151936)


def test_summary_skips_the_warm_up_step():
    rows = [{"step": s, "perf/throughput": t, "timing_s/step": 10.0 / t, "timing_s/gen": g,
             "perf/total_num_tokens": 100, "perf/max_memory_allocated_gb": m}
            for s, t, g, m in ((1, 1.0, 9.0, 2.0), (2, 4.0, 1.0, 3.0), (3, 6.0, 3.0, 2.5))]
    s = e2e.summarize(rows, QWEN05, rows_per_step=4, peak=None, measured=None)
    assert s["steps_in_median"] == [2, 3] and s["throughput_median"] == 5.0
    assert s["phase_s_median"] == {"gen": 2.0} and s["peak_memory_allocated_gib"] == 3.0
    assert s["throughput_per_step"] == [1.0, 4.0, 6.0] and s["mfu"] == {}


@pytest.mark.parametrize("engine", ["padded", "packed"])
def test_benchmark_runs_on_cpu(tmp_path, gsm8k_source, qwen_tokenizer_dir, engine):
    from rlkit.datasets import gsm8k

    files = gsm8k(local_dir=tmp_path / "gsm8k", source=str(gsm8k_source))
    out = tmp_path / "e2e.json"
    res = e2e.main(["--engine", engine, "--max-token-len", "300", "--forward-max-token-len", "600", "--shape", "tiny", "--rollout", "hf", "--device", "cpu", "--tokenizer", str(qwen_tokenizer_dir),
                    "--data", str(tmp_path / "gsm8k"), "--prompts", "4", "--n", "2", "--prompt-len", "256",
                    "--response-len", "8", "--mini-batch", "2", "--micro-batch", "2", "--log-prob-micro-batch",
                    "4", "--steps", "2", "--out", str(out)])
    assert files["train"].endswith("train.parquet")
    saved = json.loads(out.read_text())
    assert saved["summary"] == json.loads(json.dumps(res["summary"], default=float))
    assert [r["step"] for r in saved["steps"]] == [1, 2] and saved["summary"]["steps_in_median"] == [2]
    phases = saved["summary"]["phase_s_median"]
    assert {"gen", "old_log_prob", "values", "update_critic", "update_actor"} <= set(phases)
    assert saved["summary"]["throughput_median"] > 0
    assert set(saved["summary"]["mfu"]) >= {"old_log_prob", "values", "update_critic", "update_actor"}
    assert all(v["mfu"] is None and v["tflops"] > 0 for v in saved["summary"]["mfu"].values())  # no peak on a CPU
    assert saved["model"]["shape"] == "tiny" and "<model>" in " ".join(saved["config_overrides"])
    packed = "actor_rollout_ref.model.use_remove_padding=True" in saved["config_overrides"]
    assert packed == (engine == "packed") and saved["setup"]["engine"] == engine
    assert str(tmp_path) not in out.read_text()  # shareable: no local paths
    assert out.with_suffix(".png").stat().st_size > 5000


def test_engine_list_and_overrides():
    import argparse

    p = argparse.ArgumentParser()
    e2e.add_engine_arguments(p, default="padded,packed", several=True)
    assert p.parse_args([]).engine == ["padded", "packed"]  # argparse runs the string default through the parser
    assert p.parse_args(["--engine", "all"]).engine == list(e2e.ENGINES)
    assert p.parse_args(["--engine", "compiled, padded"]).engine == ["compiled", "padded"]
    with pytest.raises(SystemExit):
        p.parse_args(["--engine", "packed,fast"])
    keys = {e: e2e.engine_overrides(e, 100, 200) for e in e2e.ENGINES}
    assert keys["packed"][1:] == keys["compiled"][1:]  # the same packing; only the compile switch differs
    assert keys["packed"][0].endswith("use_torch_compile=False") and keys["compiled"][0].endswith("=True")
    assert "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=100" in keys["packed"]
    assert "critic.ppo_max_token_len_per_gpu=100" in keys["packed"]  # the actor's budget unless given its own
    assert "critic.ppo_max_token_len_per_gpu=300" in e2e.engine_overrides("packed", 100, 200, 300)
    with pytest.raises(ValueError, match="choose from padded, packed, compiled"):
        e2e.engine_overrides("fast", 100, 200)


def test_data_files_names_both_splits_and_stops_when_missing(tmp_path):
    files = e2e.data_files(tmp_path, check=False)
    assert files == {"train": str(tmp_path.resolve() / "train.parquet"), "test": str(tmp_path.resolve() / "test.parquet")}
    with pytest.raises(SystemExit, match=r"train\.parquet not found: prepare GSM8K first \(python -m rlkit\.datasets\.gsm8k\)"):
        e2e.data_files(tmp_path)
    for f in files.values():
        open(f, "w").close()
    assert e2e.data_files(tmp_path) == files


def test_read_jsonl_ends_lines_at_newlines_only(tmp_path):
    """A generated text with U+2028 / U+0085 (left unescaped by ensure_ascii=False) stays one row, as a GSM8K
    rollout dump held on a GPU run."""
    from rlkit.bench.e2e import read_jsonl

    rows = [{"output": "a\u2028b"}, {"output": "c\x85d\u2029"}, {"step": 3}]
    path = tmp_path / "dump.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + "\n", encoding="utf-8")
    assert len(path.read_text(encoding="utf-8").splitlines()) > 4  # what the reader must not do
    assert read_jsonl(path) == rows


def test_machine_record_names_rlkit_also_from_a_source_tree(monkeypatch):
    """A run from a source tree on PYTHONPATH (no installed distribution) still records rlkit's version."""
    import rlkit

    record, peak = e2e.machine_record("cpu")
    assert peak is None and record["versions"]["rlkit"] is not None
    monkeypatch.setattr(e2e, "_version", lambda name: None)  # nothing installed
    assert e2e.machine_record("cpu")[0]["versions"]["rlkit"] == rlkit.__version__
