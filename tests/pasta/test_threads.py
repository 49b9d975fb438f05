"""The `auto` thread policy counts the cores other processes leave free, from the kernel's counters."""

from __future__ import annotations

import pytest
import torch

from pasta import threads as th


def _stat(tmp_path, name, cpu_ticks: dict[int, tuple[int, int, int]], own: tuple[int, int]):
    """Fake /proc/stat (per CPU: user, system, idle) and /proc/self/stat (utime, stime)."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{c} {u} 0 {s} {i} 0 0 0 0 0 0" for c, (u, s, i) in sorted(cpu_ticks.items())]
    lines += ["intr 1 2 3"]
    stat = tmp_path / f"{name}.stat"
    stat.write_text("\n".join(lines) + "\n")
    fields = ["S"] + ["0"] * 10 + [str(own[0]), str(own[1])] + ["0"] * 30  # fields 3.. after "pid (comm)"
    self_stat = tmp_path / f"{name}.self"
    self_stat.write_text("1234 (python (odd) name) " + " ".join(fields) + "\n")
    return str(stat), str(self_stat)


@pytest.fixture
def two_cpus(monkeypatch):
    monkeypatch.setattr(th, "_cpus", lambda: {0, 1})
    monkeypatch.setattr(th, "_TICKS", 100)


def test_one_core_busy_elsewhere_leaves_one_free(tmp_path, two_cpus, monkeypatch):
    # 1 s between samples: CPU 0 fully busy (100 ticks), CPU 1 idle; we used nothing.
    a = th.sample(*_stat(tmp_path, "a", {0: (1000, 0, 500), 1: (200, 0, 900)}, (10, 5)))
    b = th.sample(*_stat(tmp_path, "b", {0: (1100, 0, 500), 1: (200, 0, 1000)}, (10, 5)))
    b = th.CpuSample(a.at + 1.0, b.busy, b.total, b.own, b.cpus)
    assert a.cpus == 2 and a.own == 15
    assert th.free_cores(a, b) == pytest.approx(1.0)
    assert th.threads_for(th.free_cores(a, b), 2) == 1


def test_our_own_load_does_not_count_against_us(tmp_path, two_cpus):
    # Both CPUs fully busy for 1 s, all of it this process (200 ticks of utime + stime): both cores are ours to use.
    a = th.sample(*_stat(tmp_path, "a", {0: (0, 0, 0), 1: (0, 0, 0)}, (0, 0)))
    b = th.sample(*_stat(tmp_path, "b", {0: (90, 10, 0), 1: (100, 0, 0)}, (150, 50)))
    b = th.CpuSample(a.at + 1.0, b.busy, b.total, b.own, b.cpus)
    assert th.free_cores(a, b) == pytest.approx(2.0)
    # Half of it someone else's: one core free.
    c = th.sample(*_stat(tmp_path, "c", {0: (90, 10, 0), 1: (100, 0, 0)}, (80, 20)))
    c = th.CpuSample(a.at + 1.0, c.busy, c.total, c.own, c.cpus)
    assert th.free_cores(a, c) == pytest.approx(1.0)


def test_cpus_outside_our_affinity_are_ignored(tmp_path, monkeypatch):
    monkeypatch.setattr(th, "_cpus", lambda: {1})
    a = th.sample(*_stat(tmp_path, "a", {0: (0, 0, 0), 1: (0, 0, 0)}, (0, 0)))
    b = th.sample(*_stat(tmp_path, "b", {0: (100, 0, 0), 1: (0, 0, 100)}, (0, 0)))  # only CPU 0 (not ours) busy
    assert b.cpus == 1 and th.free_cores(a, b) == pytest.approx(1.0)


def test_threads_for_rounds_and_bounds(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [th.threads_for(f, 4) for f in (0.0, 0.4, 0.6, 1.49, 1.51, 3.9, 9.0)] == [1, 1, 1, 1, 2, 4, 4]
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # an explicit setting is an upper bound
    assert [th.threads_for(f, 4) for f in (0.0, 1.6, 3.9)] == [1, 2, 2]
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert th.threads_for(3.9, 4) == 4


def test_parse_threads():
    assert th.parse_threads(None) == "auto" and th.parse_threads("auto") == "auto"
    assert th.parse_threads("torch") is None and th.parse_threads("3") == 3
    for bad in ("0", "-2", "many", "1.5"):
        with pytest.raises(ValueError, match="threads must be"):
            th.parse_threads(bad)


def test_missing_proc_gives_none(tmp_path):
    assert th.sample(str(tmp_path / "nope"), str(tmp_path / "nope2")) is None


def test_governor_fixed_and_auto_set_torch_threads():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        governor = th.ThreadGovernor(1)
        assert torch.get_num_threads() == 1 and governor.changes[-1][1] == 1
        auto = th.ThreadGovernor("auto", interval_s=0.0)
        cpus = len(th._cpus())
        assert 1 <= torch.get_num_threads() <= cpus
        auto.tick()  # re-samples at once with interval 0
        assert 1 <= torch.get_num_threads() <= cpus
    finally:
        torch.set_num_threads(before)
