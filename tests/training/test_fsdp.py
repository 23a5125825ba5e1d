"""rlkit.training.fsdp on CPU with gloo: one AdamW step of a sharded tiny Qwen2 over 1 and 2 ranks equals
the same step of the plain model in this process.

Tolerance: max |diff| < 1e-5 on every parameter (fp32). The sharded run sums the same per-token
losses in a different order (per rank, then a reduce-scatter), so results differ by float rounding
(~1e-7 on the gradients); AdamW's first step moves each weight by ~lr * sign(grad) = 1e-2, so a
missing 1/world factor or a rank's rows counted twice would show up as differences of ~1e-3 or more.
"""
from __future__ import annotations

import pytest
import torch

from rlkit.addresses import free_port

MAX_NORM = 0.5  # below the tiny model's gradient norm: clipping is active


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny import char_tokenizer, make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("m"), char_tokenizer())


def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 90, (4, 12), generator=g)
    mask = torch.ones(4, 11)
    mask[1, 6:] = 0  # rows with different token counts: a per-rank mean would weigh them wrongly
    mask[3, 2:] = 0
    return ids, mask


def reference(model_dir, ids, mask):
    """The plain (unsharded) step in this process."""
    from transformers import AutoModelForCausalLM

    from fsdp_ranks import token_losses
    from rlkit.training.fsdp import clip_grad_norm

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ((token_losses(model, ids) * mask).sum() / mask.sum()).backward()
    norm = clip_grad_norm(model.parameters(), MAX_NORM)
    optim.step()
    return before, model.state_dict(), norm


@pytest.mark.parametrize("world", [1, 2])
def test_sharded_step_equals_plain_step(tiny, tmp_path, world):
    import torch.multiprocessing as mp

    from fsdp_ranks import fsdp_step

    ids, mask = batch()
    mp.spawn(fsdp_step, args=(world, free_port(), tiny, ids, mask, MAX_NORM, str(tmp_path)), nprocs=world)
    before, after, norm = reference(tiny, ids, mask)
    assert norm > MAX_NORM
    for rank in range(world):
        res = torch.load(tmp_path / f"rank{rank}.pt")
        for offload in (False, True):
            got = res[offload]
            assert list(got["after"]) == list(after)  # every key, tied lm_head included
            assert all(torch.equal(got["before"][k], v) for k, v in before.items())  # gathered == loaded
            diff = max((got["after"][k] - v).abs().max().item() for k, v in after.items())
            moved = max((after[k] - v).abs().max().item() for k, v in before.items())
            print(f"world {world} rank {rank} offload {offload}: max |sharded - plain| = {diff:.2e} "
                  f"(update size {moved:.1e}), grad norm {got['norm']:.6f} vs {norm:.6f}")
            assert diff < 1e-5
            assert got["norm"] == pytest.approx(norm, rel=1e-5)
            assert got["optim"] == "cpu"
            assert got["rank0_only"] == (list(after) if rank == 0 else [])


@pytest.mark.parametrize("world", [1, 2])
def test_full_state_of_one_process_loads_into_shards(tiny, tmp_path, world):
    """A single-process checkpoint's model and AdamW state (after one plain step) loaded into 1 or 2
    ranks' shards: the weights are the saved ones exactly, and the next step equals the plain
    model's second step (same tolerance as above; a lost AdamW moment would move weights by ~lr)."""
    import torch.multiprocessing as mp
    from transformers import AutoModelForCausalLM

    from fsdp_ranks import fsdp_load_full_step, token_losses

    ids, mask = batch()
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def plain_step():
        optim.zero_grad()
        ((token_losses(model, ids) * mask).sum() / mask.sum()).backward()
        optim.step()

    plain_step()
    saved = {"model": {k: v.clone() for k, v in model.state_dict().items()},
             "optim": __import__("copy").deepcopy(optim.state_dict())}
    plain_step()
    mp.spawn(fsdp_load_full_step, args=(world, free_port(), tiny, ids, mask, saved, str(tmp_path)), nprocs=world)
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert all(torch.equal(got["loaded"][k], v) for k, v in saved["model"].items())
        assert got["steps"] == [2.0]  # AdamW's step count came with the moments
        diff = max((got["after"][k] - v).abs().max().item() for k, v in model.state_dict().items())
        print(f"world {world} rank {rank}: second step after load_full vs plain: max |diff| = {diff:.2e}")
        assert diff < 1e-5


def test_full_optimizer_state_of_another_model_is_refused(tiny):
    from transformers import AutoModelForCausalLM

    from rlkit.training import fsdp

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    optim = torch.optim.AdamW(model.parameters())
    other = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]).state_dict()
    with pytest.raises(ValueError, match="another model"):
        fsdp.load_full(model, model.state_dict(), optim, other)


def test_decoder_layers_of_tiny_qwen2_and_critic(tiny):
    from transformers import AutoModelForCausalLM

    from rlkit.training.fsdp import decoder_layers
    from rlkit.training.models import load_value_model

    lm = AutoModelForCausalLM.from_pretrained(tiny)
    assert [type(m).__name__ for m in decoder_layers(lm)] == ["Qwen2DecoderLayer"] * 2
    critic = load_value_model(tiny, torch.float32)
    assert [type(m).__name__ for m in decoder_layers(critic)] == ["Qwen2DecoderLayer"] * 2


def test_clip_grad_norm_without_fsdp():
    from rlkit.training.fsdp import clip_grad_norm

    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([3.0, 4.0, 0.0])
    assert clip_grad_norm([p], 1.0) == pytest.approx(5.0)
    assert p.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert clip_grad_norm([torch.nn.Parameter(torch.zeros(1))], 1.0) == 0.0  # no gradients at all


@pytest.mark.parametrize("world", [1, 2])
def test_compiled_layers_equal_eager_under_fsdp(tiny, tmp_path, world):
    """compile_layers on a sharded packed-attention model: logits, gradients (accumulated over three packed
    rows of different lengths) and the AdamW step equal the eager model's on every rank; the layers
    really ran compiled (dynamo captured graphs), FSDP's hooks still gathered and resharded around them.
    Backend aot_eager (dynamo + AOTAutograd, no code generation): the CPU check of the wrapping; the
    GPU test checks Inductor's kernels. Tolerance 1e-5 as above (fp32; only the op order may differ)."""
    import torch.multiprocessing as mp

    from fsdp_ranks import compiled_step

    lengths = [[5, 7], [3, 9, 4], [11, 2, 6, 8]]
    mp.spawn(compiled_step, args=(world, free_port(), tiny, lengths, "aot_eager", str(tmp_path)), nprocs=world)
    for rank in range(world):
        res = torch.load(tmp_path / f"rank{rank}.pt")
        eager, comp = res[False], res[True]
        assert comp["n_compiled"] == 2 and comp["graphs"] >= 1 and eager["graphs"] == 0
        assert [t.shape[:2] for t in comp["logits"]] == [(1, sum(n)) for n in lengths]
        assert [t.shape for t in comp["logits"]] == [t.shape for t in eager["logits"]]
        logit_diff = max((a - b).abs().max().item() for a, b in zip(eager["logits"], comp["logits"]))
        grad_diff = max((eager["grads"][k] - g).abs().max().item() for k, g in comp["grads"].items())
        step_diff = max((eager["after"][k] - v).abs().max().item() for k, v in comp["after"].items())
        grad_size = max(g.abs().max().item() for g in eager["grads"].values())
        print(f"world {world} rank {rank}: compiled vs eager logits {logit_diff:.1e}, grads {grad_diff:.1e} "
              f"(largest grad {grad_size:.1e}), after AdamW {step_diff:.1e}; graphs {comp['graphs']}")
        assert grad_size > 1e-3
        assert logit_diff < 1e-5 and grad_diff < 1e-5 and step_diff < 1e-5


def test_compile_layers_without_fsdp_counts_layers(tiny):
    from transformers import AutoModelForCausalLM

    from rlkit.training.fsdp import compile_layers

    lm = AutoModelForCausalLM.from_pretrained(tiny)
    eager = [layer.forward for layer in lm.model.layers]
    assert compile_layers(lm, backend="eager") == 2
    assert all(layer._rlkit_eager_forward == f for layer, f in zip(lm.model.layers, eager))
    assert all(layer.forward != f for layer, f in zip(lm.model.layers, eager))


def test_compile_failure_falls_back_to_eager_with_a_warning(tiny):
    """A compiler that fails (here a backend that raises) does not stop training: each layer warns once,
    runs its eager forward from then on, and the model's outputs are the eager ones."""
    from transformers import AutoModelForCausalLM

    from rlkit.training.fsdp import compile_layers

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no kernels today")

    ids = torch.randint(5, 90, (2, 7), generator=torch.Generator().manual_seed(0))
    lm = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    with torch.no_grad():
        expected = lm(input_ids=ids).logits
    torch._dynamo.reset()
    assert compile_layers(lm, backend=broken_backend) == 2
    with pytest.warns(RuntimeWarning, match="torch.compile failed on Qwen2DecoderLayer.*use_torch_compile=False"):
        with torch.no_grad():
            got = lm(input_ids=ids).logits
    assert torch.equal(got, expected)
    assert all(layer.forward == layer._rlkit_eager_forward for layer in lm.model.layers)


@pytest.mark.parametrize("world", [1, 2])
def test_one_rank_wraps_the_whole_model_as_one_unit(tiny, tmp_path, world):
    """On one rank (nothing to shard) without offload the model is one FSDP unit - fewer hooks per micro-batch -
    with the gradients of the per-layer wrapping; with offload or several ranks every decoder layer is a unit."""
    import torch.multiprocessing as mp
    from transformers import AutoConfig

    from fsdp_ranks import fsdp_units

    layers = AutoConfig.from_pretrained(tiny).num_hidden_layers
    mp.spawn(fsdp_units, args=(world, free_port(), tiny, str(tmp_path)), nprocs=world)
    out = torch.load(tmp_path / "units0.pt")
    assert out["default"]["units"] == (1 if world == 1 else layers + 1)
    assert out["offload"]["units"] == out["per_layer"]["units"] == layers + 1
    for k, g in out["per_layer"]["grads"].items():
        assert torch.allclose(out["default"]["grads"][k], g, atol=1e-6), k
