"""The `hf` engine: shapes, stop handling, log-probs equal a forward pass, registry."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tiny import char_tokenizer, make_tiny_model

from rlkit.rollout import GenerationOutput, SamplingParams, get_rollout_class
from rlkit.rollout.hf import HFRollout


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    d = make_tiny_model(tmp_path_factory.mktemp("m"), char_tokenizer())
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d)
    return HFRollout(model, tok.pad_token_id, [tok.eos_token_id]), tok


def _forward_log_probs(model, prompt, response, temperature):
    x = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(x).logits[0, len(prompt) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_log_probs_match_forward_pass(engine, temperature):
    eng, tok = engine
    torch.manual_seed(0)
    prompts = [tok("hello").input_ids, tok("x").input_ids]  # different lengths: left padding matters
    out = eng.generate(prompts, SamplingParams(max_new_tokens=10, n=3, temperature=temperature))
    assert len(out) == 6
    for k, (resp, lps) in enumerate(zip(out.response_ids, out.log_probs)):
        ref = _forward_log_probs(eng.module, prompts[k // 3], resp, temperature)
        assert torch.allclose(ref, torch.tensor(lps), atol=1e-4)


def test_greedy_is_deterministic_and_n_copies_agree(engine):
    eng, tok = engine
    p = [tok("abc").input_ids]
    a = eng.generate(p, SamplingParams(max_new_tokens=6, n=2, do_sample=False))
    b = eng.generate(p, SamplingParams(max_new_tokens=6, n=1, temperature=0.0))
    assert a.response_ids[0] == a.response_ids[1] == b.response_ids[0]


def test_finish_reasons_and_stop_tokens(engine):
    eng, tok = engine
    p = [tok("q").input_ids]
    torch.manual_seed(1)
    out = eng.generate(p, SamplingParams(max_new_tokens=5, n=16))
    for ids, reason in zip(out.response_ids, out.finish_reasons):
        if reason == "stop":
            assert ids[-1] == tok.eos_token_id and tok.eos_token_id not in ids[:-1]
        else:
            assert len(ids) == 5 and tok.eos_token_id not in ids
    # make the greedy continuation's first token a stop token: every response is 1 token long
    first = eng.generate(p, SamplingParams(max_new_tokens=5, do_sample=False)).response_ids[0][0]
    out = eng.generate(p, SamplingParams(max_new_tokens=5, do_sample=False, stop_token_ids=[first]))
    assert out.response_ids == [[first]] and out.finish_reasons == ["stop"]


def test_ignore_eos_runs_to_max(engine):
    eng, tok = engine
    torch.manual_seed(2)
    out = eng.generate([tok("q").input_ids], SamplingParams(max_new_tokens=7, n=8, ignore_eos=True))
    assert all(len(r) == 7 for r in out.response_ids) and set(out.finish_reasons) == {"length"}


def test_model_default_eos_does_not_leak(tmp_path):
    """The checkpoint's generation_config names an eos; ignore_eos (and an engine with no stop ids)
    must still decode every token, not pad after the model's default eos."""
    tok = char_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path, tok))
    assert model.generation_config.eos_token_id == tok.eos_token_id
    with torch.no_grad():  # make eos frequent
        model.lm_head.weight[tok.eos_token_id] += 0.5 * model.model.embed_tokens.weight.mean(0)
    eng = HFRollout(model, tok.pad_token_id, [])
    torch.manual_seed(0)
    out = eng.generate([[5, 6, 7]], SamplingParams(max_new_tokens=30, n=32, ignore_eos=True))
    assert any(tok.eos_token_id in r for r in out.response_ids)
    for r in out.response_ids:
        if tok.eos_token_id in r:  # decoding went on after eos: no padding follows it
            assert r[r.index(tok.eos_token_id) + 1 :] != [tok.pad_token_id] * (29 - r.index(tok.eos_token_id))
    assert model.generation_config.eos_token_id == tok.eos_token_id  # restored


def test_sleep_blocks_generate_and_bad_input(engine):
    eng, tok = engine
    eng.sleep()
    with pytest.raises(RuntimeError, match="wake_up"):
        eng.generate([[5]], SamplingParams(max_new_tokens=2))
    eng.wake_up()
    with pytest.raises(ValueError, match="empty"):
        eng.generate([[]], SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)


def test_update_weights_changes_outputs(engine, tmp_path):
    eng, tok = engine
    p = [tok("abc").input_ids]
    before = eng.generate(p, SamplingParams(max_new_tokens=6, do_sample=False)).log_probs[0]
    other = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path, char_tokenizer(), seed=7))
    saved = {k: v.clone() for k, v in eng.module.state_dict().items()}
    eng.update_weights(other.named_parameters())
    after = eng.generate(p, SamplingParams(max_new_tokens=6, do_sample=False)).log_probs[0]
    assert before != after
    eng.update_weights(saved.items())
    assert eng.generate(p, SamplingParams(max_new_tokens=6, do_sample=False)).log_probs[0] == pytest.approx(before)


def test_registry_is_lazy_and_names_engines():
    assert get_rollout_class("hf") is HFRollout
    with pytest.raises(ValueError, match="hf, sglang"):
        get_rollout_class("vllm")


def test_sglang_missing_gives_clear_error():
    pytest.importorskip("torch")
    try:
        import sglang  # noqa: F401
        pytest.skip("sglang is installed here")
    except ImportError:
        pass
    cls = get_rollout_class("sglang")  # registered and importable without sglang
    with pytest.raises(ImportError, match="rollout.name=hf"):
        cls("/any/model")


def test_generation_output_checks_lengths():
    with pytest.raises(ValueError, match="log-probs"):
        GenerationOutput([[1, 2]], [[0.0]], ["stop"])
