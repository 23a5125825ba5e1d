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


# ---------------------------------------------------------------------- trainer.rollout_data_dir / validation_data_dir
def test_dump_generations_writes_verls_lines(tmp_path):
    import numpy as np

    from rlkit.loggers import dump_generations

    folder = tmp_path / "not" / "yet"  # created with its parents
    path = dump_generations(folder, 7, ["Q: 2+2 ?", "Q: café"], ["4", "très bien 数"], ["4", "5"], [1.0, 0.0],
                            {"acc": [True, False], "pred": ["4", None], "vec": [np.arange(2), np.float32(0.5)],
                             "short": [1.0]})
    assert path == folder / "7.jsonl"
    raw = path.read_bytes()
    assert "très bien 数".encode("utf-8") in raw  # ensure_ascii=False, UTF-8
    lines = raw.decode("utf-8").splitlines()
    assert len(lines) == 2 and raw.endswith(b"\n")
    first, second = (json.loads(line) for line in lines)
    # verl's keys in verl's order, then the reward's extras of the right length ("short" has one value: left out)
    assert list(first) == ["input", "output", "gts", "score", "step", "acc", "pred", "vec"]
    assert first == {"input": "Q: 2+2 ?", "output": "4", "gts": "4", "score": 1.0, "step": 7, "acc": True,
                     "pred": "4", "vec": [0, 1]}
    assert second == {"input": "Q: café", "output": "très bien 数", "gts": "5", "score": 0.0, "step": 7, "acc": False,
                      "pred": None, "vec": 0.5}


def test_dump_generations_replaces_only_its_steps_file(tmp_path):
    from rlkit.loggers import dump_generations

    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "1.jsonl").write_text("an earlier run of step 1\n")
    (tmp_path / "2.jsonl").write_text("step 2\n")
    dump_generations(tmp_path, 1, ["a"], ["b"], ["c"], [0.5])
    assert [json.loads(line)["output"] for line in (tmp_path / "1.jsonl").read_text().splitlines()] == ["b"]
    assert (tmp_path / "notes.txt").read_text() == "keep me" and (tmp_path / "2.jsonl").read_text() == "step 2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.jsonl", "2.jsonl", "notes.txt"]  # no temporary file left


def test_interrupted_dump_leaves_the_previous_file_whole(tmp_path):
    from rlkit.loggers import dump_generations

    class Stop:
        def tolist(self):
            raise KeyboardInterrupt  # the user stops the run while the second line is written

    (tmp_path / "3.jsonl").write_text("the previous dump\n")
    with pytest.raises(KeyboardInterrupt):
        dump_generations(tmp_path, 3, ["a", "b"], ["c", "d"], ["e", "f"], [1.0, 0.0], {"x": [1, Stop()]})
    assert (tmp_path / "3.jsonl").read_text() == "the previous dump\n"
    assert [p.name for p in tmp_path.iterdir()] == ["3.jsonl"]


def test_dump_into_a_file_names_the_key_and_the_fix(tmp_path):
    from rlkit.loggers import dump_generations

    (tmp_path / "taken").write_text("user data")
    with pytest.raises(OSError, match=r"trainer.validation_data_dir=.*taken: cannot write .*taken/0.jsonl: it or a "
                                      r"parent is a file. Fix: point trainer.validation_data_dir at a writable folder"):
        dump_generations(tmp_path / "taken", 0, ["a"], ["b"], ["c"], [1.0], key="trainer.validation_data_dir")
    assert (tmp_path / "taken").read_text() == "user data"
    with pytest.raises(ValueError, match="one value per response"):
        dump_generations(tmp_path / "d", 0, ["a", "b"], ["b"], ["c", "d"], [1.0, 2.0])
    assert not (tmp_path / "d").exists()


# ---------------------------------------------------------------------- trainer.log_val_generations
def test_val_generations_are_picked_as_verl_picks_them():
    """verl: sort the (input, output, score) triples by input, shuffle with RandomState(42), keep the first N."""
    import numpy as np

    from rlkit.loggers import pick_val_generations

    inputs = ["q2", "q1", "q3", "q1", "q0"]  # q1 twice (val_kwargs.n=2): a stable sort keeps o1a before o1b
    outputs = ["o2", "o1a", "o3", "o1b", "o0"]
    scores = [0.2, 0.1, 0.3, 0.15, 0.0]
    # sorted: q0/o0, q1/o1a, q1/o1b, q2/o2, q3/o3; RandomState(42) puts 5 items in the order 1, 4, 2, 0, 3
    assert np.random.RandomState(42).permutation(5).tolist() == [1, 4, 2, 0, 3]
    assert pick_val_generations(inputs, outputs, scores, 3) == [("q1", "o1a", 0.1), ("q3", "o3", 0.3),
                                                                ("q1", "o1b", 0.15)]
    assert pick_val_generations(inputs, outputs, scores, 10) == [("q1", "o1a", 0.1), ("q3", "o3", 0.3),
                                                                 ("q1", "o1b", 0.15), ("q0", "o0", 0.0),
                                                                 ("q2", "o2", 0.2)]
    assert pick_val_generations(inputs, outputs, scores, 0) == []
    # reversed, the same samples sort the same except the tie: q0/o0, q1/o1b, q1/o1a, q2/o2, q3/o3
    assert pick_val_generations(inputs[::-1], outputs[::-1], scores[::-1], 2) == [("q1", "o1b", 0.15),
                                                                                 ("q3", "o3", 0.3)]
    with pytest.raises(ValueError):
        pick_val_generations(["a"], [], [1.0], 1)


def test_each_logger_takes_the_val_generations(tmp_path, capsys):
    samples = [("count 1\n", "12", 0.5), ("count 3\n", "x", 0.0)]
    loggers = ["console", "jsonl"]
    try:
        import tensorboard  # noqa: F401

        loggers.append("tensorboard")
    except ImportError:
        pass
    t = Tracking(loggers, tmp_path)
    t.log({"val-core/toy/reward/mean@1": 0.25}, step=2)
    t.log_generations(samples, step=2)
    t.log_generations([], step=3)  # trainer.log_val_generations=0: nothing
    t.close()
    out = capsys.readouterr().out
    assert out.endswith("val/generations step:2 sample:1/2 score:0.5\n[input]\ncount 1\n\n[output]\n12\n"
                        "val/generations step:2 sample:2/2 score:0\n[input]\ncount 3\n\n[output]\nx\n")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 2, "val-core/toy/reward/mean@1": 0.25},
                    {"step": 2, "val/generations": 1, "input": "count 1\n", "output": "12", "score": 0.5},
                    {"step": 2, "val/generations": 2, "input": "count 3\n", "output": "x", "score": 0.0}]
    if "tensorboard" in loggers:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
        acc.Reload()
        (event,) = acc.Tensors("val/generations/text_summary")
        text = event.tensor_proto.string_val[0].decode()
        assert event.step == 2 and text.startswith("**Generation Results - Step 2**")
        assert "### Sample 2\n**Input:** count 3\n\n\n**Output:** x\n\n**Score:** 0.0" in text
