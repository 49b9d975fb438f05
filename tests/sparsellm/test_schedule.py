import math

import pytest
import torch
from torch import nn

from sparsellm.pruner import Pruner, PrunerConfig
from sparsellm.schedule import (
    PruningSchedule,
    geometric_average_density_continuous,
    schedule_from_compute_fractions,
)


def test_geometric_event_densities_closed_form():
    s = PruningSchedule(total_steps=1000, sparsity=0.8, start_step=100, end_step=500, frequency=100)
    assert s.num_events == 5
    assert s.event_steps() == [100, 200, 300, 400, 500]
    for k, d in enumerate(s.event_densities()):
        assert d == pytest.approx(0.2 ** ((k + 1) / 5))
    # each event removes the same fraction p = 1 - (1-s)^(1/n) of the survivors
    p = 1 - 0.2 ** (1 / 5)
    ds = [1.0] + s.event_densities()
    for a, b in zip(ds, ds[1:]):
        assert 1 - b / a == pytest.approx(p)
    dens = s.densities()
    assert dens[99] == 1.0 and dens[100] == pytest.approx(0.2 ** 0.2) and dens[-1] == pytest.approx(0.2)
    expected = (100 * 1 + sum(100 * d for d in s.event_densities()[:-1]) + 500 * 0.2) / 1000
    assert s.average_density() == pytest.approx(expected)
    assert s.average_params(1000, 50) == pytest.approx(expected * 1000 + 50)


def test_cubic_and_oneshot():
    c = PruningSchedule(1000, 0.6, 100, 500, 100, "cubic")
    ed = c.event_densities()
    assert ed[0] == pytest.approx(1.0) and ed[-1] == pytest.approx(0.4)
    assert all(a >= b for a, b in zip(ed, ed[1:]))
    assert ed[1] == pytest.approx(1 - 0.6 * (1 - 0.75 ** 3))
    o = PruningSchedule(1000, 0.6, 300, kind="oneshot")
    assert o.average_density() == pytest.approx(0.3 + 0.7 * 0.4)


def test_dense_schedule_has_no_events():
    s = PruningSchedule(100, 0.0, 0, 50, 10)
    assert s.num_events == 0 and s.average_density() == 1.0


@pytest.mark.parametrize("bad", [
    dict(total_steps=0, sparsity=0.5),
    dict(total_steps=10, sparsity=1.0),
    dict(total_steps=10, sparsity=0.5, start_step=5, end_step=2),
    dict(total_steps=10, sparsity=0.5, frequency=0),
    dict(total_steps=10, sparsity=0.5, kind="linear"),
])
def test_validation(bad):
    with pytest.raises(ValueError):
        PruningSchedule(**bad)


@pytest.mark.parametrize("s", [0.5, 0.8])
def test_compute_fractions(s):
    sch = schedule_from_compute_fractions(20000, s, 0.25, 0.75, frequency=100)
    summ = sch.summary()
    assert summ["start_compute_fraction"] == pytest.approx(0.25, abs=0.005)
    assert summ["end_compute_fraction"] == pytest.approx(0.75, abs=0.005)
    if s == 0.8:  # the paper: 80% sparsity prunes from about 10% to about 50% of steps
        assert sch.start_step / 20000 == pytest.approx(0.10, abs=0.01)
        assert sch.end_step / 20000 == pytest.approx(0.50, abs=0.01)
    # many events: the discrete average approaches the continuous closed form
    cont = geometric_average_density_continuous(s, sch.start_step / 20000, sch.end_step / 20000)
    assert sch.average_density() == pytest.approx(cont, abs=0.01)


@pytest.mark.parametrize("kind", ["geometric", "cubic", "oneshot"])
@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
def test_schedule_matches_pruner_simulation(kind, structure):
    """Step-by-step simulation: the pruner's live density equals the schedule at every step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8), nn.Linear(8, 12))
    s = 0.5 if structure == "2:4" else 0.7
    sch = PruningSchedule(120, s, 10, 70, 15, kind)
    pr = Pruner(model, PrunerConfig(sch, structure=structure))
    dens = sch.densities()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for t in range(120):
        pr.step(t, opt)
        model(torch.randn(4, 16)).pow(2).mean().backward()
        pr.mask_grads()
        opt.step()
        opt.zero_grad()
        pr.apply_masks()
        assert abs(pr.density - dens[t]) <= 1 / pr.total, (t, pr.density, dens[t])
        nz = sum(int((p != 0).sum()) for p in pr.params.values())
        assert nz <= pr.alive
    assert pr.average_density == pytest.approx(sch.average_density(), abs=1 / pr.total)
    assert pr.average_params() == pytest.approx(sch.average_params(pr.total), abs=1.0)
    assert math.isclose(pr.density, 1 - s, abs_tol=1 / pr.total)


from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=60, deadline=None)
@given(T=st.integers(2, 3000), s=st.floats(0.01, 0.95), a=st.floats(0, 0.9), w=st.floats(0, 1),
       f=st.integers(1, 300), kind=st.sampled_from(["geometric", "cubic", "oneshot"]))
def test_schedule_invariants(T, s, a, w, f, kind):
    start = int(a * (T - 1))
    end = start + int(w * (T - 1 - start))
    sch = PruningSchedule(T, s, start, end, f, kind)
    d = sch.densities()
    assert (d[1:] <= d[:-1] + 1e-12).all()  # never regrows
    assert d[-1] == pytest.approx(1 - s)
    assert (d[:start] == 1).all()
    assert 1 - s - 1e-12 <= sch.average_density() <= 1
    assert sch.density_at(T - 1) == pytest.approx(d[-1])
    assert sum(sch.target_at_event(t) is not None for t in range(T)) == sch.num_events
