"""The training-phase benchmark on a CPU: both engines, timed phases, MFU fields and a profile."""
from __future__ import annotations

import json

from rlkit.bench import train


def test_synthetic_batch_shapes_and_lengths():
    b = train.synthetic_batch(rows=6, prompt_min=3, prompt_max=5, response_len=4, vocab=50)
    assert len(b) == 6 and b["responses"].shape == (6, 4) and b["prompts"].shape[1] == 5
    prompt_lengths = b["attention_mask"][:, :5].sum(1)
    assert ((3 <= prompt_lengths) & (prompt_lengths <= 5)).all()
    assert b["response_mask"].sum() == 24  # full-length responses


def test_benchmark_runs_both_engines_on_cpu(tmp_path, qwen_tokenizer_dir):
    out = tmp_path / "train.json"
    res = train.main(["--shape", "tiny", "--device", "cpu", "--tokenizer", str(qwen_tokenizer_dir), "--rows", "8",
                      "--prompt-min", "5", "--prompt-max", "20", "--response-len", "16", "--mini-batch", "4",
                      "--micro-batch", "2", "--log-prob-micro-batch", "4", "--max-token-len", "80",
                      "--forward-max-token-len", "160", "--reps", "1", "--profile", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert set(saved["engines"]) == {"padded", "packed"} == set(res["engines"])
    for engine in saved["engines"].values():
        assert set(engine["seconds"]) == set(train.PHASES) and all(v > 0 for v in engine["seconds"].values())
        assert set(engine["mfu"]) == set(train.PHASES) and all(v["tflops"] > 0 for v in engine["mfu"].values())
        assert set(engine["profile"]) == set(train.PHASES)
        prof = engine["profile"]["update_actor"]
        assert prof["top_ops"] and all(op["self_ms"] >= 0 and op["calls"] >= 1 for op in prof["top_ops"])
        assert prof["wall_s"] > 0 and prof["kernel_s"] == 0  # no device kernels on a CPU
        # the worker marks its update ranges: 2 mini-batches of 4 rows, micro-batches within the token budget
        regions = prof["regions"]
        assert regions["rlkit/update/optimizer"]["count"] == 2
        assert regions["rlkit/update/backward"]["count"] == regions["rlkit/update/forward+loss"]["count"] >= 2
        assert 0 < regions["rlkit/update/backward"]["host_s"] < prof["wall_s"]
        assert engine["profile"]["old_log_prob"]["regions"]["rlkit/forward"]["count"] >= 2
    assert saved["tokens"]["real"] < saved["tokens"]["padded"]
    assert str(tmp_path) not in out.read_text()
