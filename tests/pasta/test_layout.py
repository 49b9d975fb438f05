"""The incremental layout against a declarative statement of the paper's visibility rules, on random programs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pasta.layout import MAIN, Layout, LayoutConfig

# A program: a list of operations. ("main", n) appends n main tokens; ("fork", tokens) appends one main token (the
# end of a promise tag) and forks; ("chunk", i, n) appends n tokens to the i-th forked chunk; ("sync",) joins and
# appends the main token that completes the sync.
op = st.one_of(
    st.tuples(st.just("main"), st.integers(1, 3)),
    st.tuples(st.just("fork"), st.one_of(st.none(), st.integers(-3, 50))),
    st.tuples(st.just("chunk"), st.integers(0, 5), st.integers(1, 4)),
    st.tuples(st.just("sync")),
)


def run(program, prompt=3):
    layout = Layout(prompt, LayoutConfig(reserve_factor=1.5, default_tokens=4, max_reserve=20))
    # Declarative attributes of every slot, and its position by the docstring's rules (counted here, not read back).
    attrs = [("prompt", None, None)] * prompt
    expected_positions = list(range(prompt))
    main_next = prompt  # the main thread's next position
    chunk_next: dict[int, int] = {}  # chunk -> its next position
    epoch, main_ordinal = 0, 0
    chunks: list[int] = []  # layout ids of forked chunks
    fork_info: dict[int, tuple[int, int]] = {}  # chunk -> (main ordinal at fork, epoch at fork)
    join_epoch: dict[int, int] = {}
    chunk_ordinal: dict[int, int] = {}
    for operation in program:
        if operation[0] in ("main", "fork", "sync"):
            if operation[0] == "sync":
                joined = layout.join()
                epoch += 1
                for c in joined:
                    join_epoch[c] = epoch
                    main_next = max(main_next, chunk_next[c])  # one past the last position of any joined chunk
            count = operation[1] if operation[0] == "main" else 1
            for _ in range(count):
                layout.append(MAIN, 1)
                main_ordinal += 1
                attrs.append(("main", main_ordinal, epoch))
                expected_positions.append(main_next)
                main_next += 1
            if operation[0] == "fork":
                c = layout.fork(operation[1])
                chunks.append(c)
                fork_info[c] = (main_ordinal, epoch)
                chunk_ordinal[c] = 0
                chunk_next[c] = main_next  # right after the token that ended the promise
                main_next += layout.config.reservation(operation[1])  # the promise's reserved position ids
        elif chunks:
            c = chunks[operation[1] % len(chunks)]
            if c in join_epoch:
                continue  # a joined chunk is finished
            for _ in range(operation[2]):
                layout.append(c, 1)
                chunk_ordinal[c] += 1
                attrs.append((c, chunk_ordinal[c], None))
                expected_positions.append(chunk_next[c])
                chunk_next[c] += 1
    layout.expected_positions = expected_positions  # for the position test
    return layout, attrs, fork_info, join_epoch


def sees(q, k, fork_info, join_epoch) -> bool:
    kind_q, ord_q, epoch_q = q
    kind_k, ord_k, _ = k
    if kind_k == "prompt":
        return True
    if kind_q == "prompt":
        return False
    if kind_q == "main":
        if kind_k == "main":
            return ord_k <= ord_q
        return join_epoch.get(kind_k, 10**9) <= epoch_q
    fork_ordinal, fork_epoch = fork_info[kind_q]
    if kind_k == "main":
        return ord_k <= fork_ordinal
    if kind_k == kind_q:
        return ord_k <= ord_q
    return join_epoch.get(kind_k, 10**9) <= fork_epoch


@settings(max_examples=150, deadline=None)
@given(st.lists(op, max_size=25))
def test_visibility_matches_declarative_rules(program):
    layout, attrs, fork_info, join_epoch = run(program)
    mask = layout.full_mask()
    n = len(attrs)
    assert mask.shape == (n, n)
    for i in range(3, n):
        expected = torch.tensor([sees(attrs[i], attrs[j], fork_info, join_epoch) if j <= i else False for j in range(n)])
        assert torch.equal(mask[i], expected), f"slot {i} ({attrs[i]})"


@settings(max_examples=100, deadline=None)
@given(st.lists(op, max_size=25))
def test_step_rows_equal_the_full_mask(program):
    """The engine asks for each step's rows right after laying the step out (`rows`/`step_mask`); the collator and
    the oracle read the whole history (`full_mask`) at the end. Both must give every slot the same row."""
    layout = Layout(3, LayoutConfig(reserve_factor=1.5, default_tokens=4, max_reserve=20))
    seen = {slot: row for slot, row in enumerate(layout.rows([0, 1, 2]))}
    chunks: list[int] = []
    for operation in program:
        if operation[0] == "chunk":
            if not chunks:
                continue
            thread, count = chunks[operation[1] % len(chunks)], operation[2]
            if layout.threads[thread].joined:
                continue
        else:
            if operation[0] == "sync":
                layout.join()
            thread, count = MAIN, operation[1] if operation[0] == "main" else 1
        slots = layout.append(thread, count)
        seen.update(zip(slots, layout.rows(slots, slots[-1] + 1)))
        if operation[0] == "fork":
            chunks.append(layout.fork(operation[1]))
    full = layout.full_mask()
    for slot, row in seen.items():
        assert torch.equal(full[slot, : row.numel()], row) and not full[slot, row.numel():].any(), slot


@settings(max_examples=100, deadline=None)
@given(st.lists(op, max_size=25))
def test_positions_follow_reservations(program):
    layout, attrs, fork_info, join_epoch = run(program)
    config = layout.config
    assert layout.positions == layout.expected_positions  # every slot, exactly
    main_positions = [layout.positions[s] for s in layout.threads[MAIN].slots]
    assert all(b > a for a, b in zip(main_positions, main_positions[1:]))  # the main thread only moves forward
    for c, thread in layout.threads.items():
        positions = [layout.positions[s] for s in thread.slots]
        if c != MAIN and positions:
            assert positions == list(range(positions[0], positions[0] + len(positions)))
            # A chunk starts right after the main token that ended its promise.
            fork_slot = layout.threads[MAIN].slots[fork_info[c][0] - 1]
            assert positions[0] == layout.positions[fork_slot] + 1
    assert 1 <= config.reservation(None) <= config.max_reserve
    assert config.reservation(10**6) == config.max_reserve and config.reservation(-5) == 1


def test_reservation_examples():
    config = LayoutConfig(reserve_factor=2.0, default_tokens=64, max_reserve=4096)
    assert config.reservation(30) == 60 and config.reservation(None) == 128
    with pytest.raises(ValueError):
        Layout(0)


def test_fixed_reservation_ignores_the_tokens_attribute():
    from pasta.layout import LayoutConfig

    config = LayoutConfig(fixed_reserve=24, max_reserve=100)
    assert [config.reservation(t) for t in (None, 1, 10, 5000)] == [24, 24, 24, 24]
    assert LayoutConfig(fixed_reserve=500, max_reserve=100).reservation(3) == 100
    assert LayoutConfig(reserve_factor=10.0).reservation(12) == 120
    with pytest.raises(ValueError, match="fixed_reserve"):
        LayoutConfig(fixed_reserve=0)
