import pytest
import torch
from torch import nn

from sparsellm.models import build_model
from sparsellm.pruner import Pruner, PrunerConfig, count_parameters, is_valid_2_4, prunable_parameters
from sparsellm.schedule import PruningSchedule


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 12), nn.Linear(12, 4))


def _sched(s=0.75, T=100, kind="geometric"):
    return PruningSchedule(T, s, 0, 30, 10, kind)


def test_global_magnitude_one_threshold():
    m = _mlp()
    with torch.no_grad():
        m[3].weight.mul_(10)  # one layer with much larger weights: a global threshold spares it
    pr = Pruner(m, PrunerConfig(_sched()))
    pr.prune_to(0.4)
    alive, dead = [], []
    for n, p in pr.params.items():
        mk = pr.masks[n].bool()
        alive.append(p.detach()[mk].abs())
        dead.append(pr.params[n].detach()[~mk])
    assert pr.alive == round(0.4 * pr.total)
    assert all(float(d.abs().max()) == 0 for d in dead if d.numel())
    # weights are zeroed after pruning; compare against a fresh copy's magnitudes
    m0 = _mlp()
    with torch.no_grad():
        m0[3].weight.mul_(10)
    w0 = prunable_parameters(m0)
    kept = torch.cat([w0[n].detach()[pr.masks[n].bool()].abs() for n in pr.params])
    gone = torch.cat([w0[n].detach()[~pr.masks[n].bool()].abs() for n in pr.params])
    assert float(kept.min()) >= float(gone.max())
    assert pr.layer_sparsity()["3.weight"] < 0.05  # big layer barely pruned: not per-layer


def test_no_regrowth_and_masks_survive_weight_decay():
    m = _mlp()
    pr = Pruner(m, PrunerConfig(_sched(0.8)))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    prev = {n: mk.clone() for n, mk in pr.masks.items()}
    for t in range(60):
        pr.step(t, opt)
        m(torch.randn(5, 8)).pow(2).mean().backward()
        pr.mask_grads()
        for n, p in pr.params.items():  # pruned weights receive no gradient
            assert float(p.grad[~pr.masks[n].bool()].abs().sum()) == 0
        opt.step()
        opt.zero_grad()
        pr.apply_masks()
        for n, mk in pr.masks.items():
            assert not bool((mk.bool() & ~prev[n].bool()).any()), "a pruned weight came back"
            assert float(pr.params[n].detach()[~mk.bool()].abs().sum()) == 0
            prev[n] = mk.clone()


def test_optimizer_state_of_pruned_weights_zeroed():
    m = _mlp()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(3):
        m(torch.randn(5, 8)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    pr = Pruner(m, PrunerConfig(_sched()))
    pr.prune_to(0.5, optimizer=opt)
    for n, p in pr.params.items():
        st = opt.state[p]
        dead = ~pr.masks[n].bool()
        assert dead.any()
        assert float(st["exp_avg"][dead].abs().sum()) == 0
        assert float(st["exp_avg_sq"][dead].abs().sum()) == 0
        assert float(st["exp_avg_sq"][~dead].abs().sum()) > 0


def test_2_4_valid_at_every_event():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 8))
    sch = PruningSchedule(100, 0.5, 0, 40, 10)
    pr = Pruner(m, PrunerConfig(sch, structure="2:4"))
    for t in range(100):
        pr.step(t)
        for n, mk in pr.masks.items():
            assert bool(((mk.reshape(-1, 4) != 0).sum(-1) >= 2).all())
    for p in pr.params.values():
        assert is_valid_2_4(p.detach())
        assert bool(((p.detach().reshape(-1, 4) != 0).sum(-1) == 2).all())
    with pytest.raises(ValueError, match="2:4"):
        PrunerConfig(PruningSchedule(100, 0.7, 0, 40, 10), structure="2:4")


def test_random_scores_seeded():
    a = Pruner(_mlp(), PrunerConfig(_sched(), method="random", seed=3))
    b = Pruner(_mlp(), PrunerConfig(_sched(), method="random", seed=3))
    c = Pruner(_mlp(), PrunerConfig(_sched(), method="random", seed=4))
    for p in (a, b, c):
        p.prune_to(0.5, step=7)
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert not all(torch.equal(a.masks[n], c.masks[n]) for n in a.masks)


def test_llama_prunable_set_and_exempt():
    m = build_model("nano", vocab_size=64, max_seq_len=32)
    names = set(prunable_parameters(m))
    assert "lm_head.weight" in names
    assert not any("embed" in n or "norm" in n for n in names)
    assert len(names) == 2 * 7 + 1  # q k v o gate up down per layer + head
    ex = set(prunable_parameters(m, [r"lm_head", r"layers\.0\.self_attn"]))
    assert "lm_head.weight" not in ex and not any("layers.0.self_attn" in n for n in ex)
    pr, other = count_parameters(m)
    assert pr + other == sum(p.numel() for p in m.parameters())


def test_tied_head_is_not_pruned():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    m = LlamaForCausalLM(cfg)
    assert "lm_head.weight" not in prunable_parameters(m)


def test_state_dict_roundtrip():
    m = _mlp()
    pr = Pruner(m, PrunerConfig(_sched()))
    for t in range(25):
        pr.step(t)
    st = pr.state_dict()
    m2 = _mlp(1)
    pr2 = Pruner(m2, PrunerConfig(_sched()))
    pr2.load_state_dict(st)
    assert pr2.alive == pr.alive and pr2.average_density == pytest.approx(pr.average_density)
    for n in pr.masks:
        assert torch.equal(pr.masks[n], pr2.masks[n])
        assert float(pr2.params[n].detach()[~pr2.masks[n].bool()].abs().sum()) == 0
