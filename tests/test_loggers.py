import json

import pytest

from rlkit.loggers import ConsoleLogger, Tracking


def test_console_line_is_verl_like(capsys):
    ConsoleLogger().log({"critic/score/mean": 0.5, "actor/pg_loss": -0.0123456, "flag": float("nan")}, step=3)
    assert capsys.readouterr().out.strip() == "step:3 - critic/score/mean:0.5 - actor/pg_loss:-0.01235 - flag:nan"


def test_jsonl_and_tensorboard_files(tmp_path):
    pytest.importorskip("tensorboard")
    t = Tracking(["jsonl", "tensorboard"], tmp_path)
    t.log({"critic/score/mean": 0.25, "bad": float("inf")}, step=1)
    t.log({"critic/score/mean": 0.5}, step=2)
    t.close()
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "critic/score/mean": 0.25, "bad": None}, {"step": 2, "critic/score/mean": 0.5}]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("critic/score/mean")] == [0.25, 0.5]


def test_unknown_logger():
    with pytest.raises(ValueError, match="console, jsonl, tensorboard"):
        Tracking(["wandb"], "/tmp")
