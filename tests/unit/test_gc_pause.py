"""The collector paused and frozen around builds: garbage waiting for it is collected, not made immortal."""

from __future__ import annotations

import gc
import weakref

from dataplane.gc_pause import FrozenBudget, gc_paused


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_cyclic_garbage_pending_at_a_build_is_collected_not_frozen() -> None:
    was = gc.isenabled()
    gc.disable()  # keep the cycle pending, as a busy process between two collections has it
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a
        dead = weakref.ref(a)
        del a, b
        assert dead() is not None
        with gc_paused():
            pass
    finally:
        if was:
            gc.enable()
    assert dead() is None
    gc.collect()  # a frozen object is invisible to this: only the check above proves it was never frozen


def test_a_cycle_that_dies_frozen_is_collected_when_the_budget_says_so() -> None:
    budget = FrozenBudget()
    with gc_paused(budget):  # the first build with a budget is a full one: the baseline is set
        pass
    assert budget.full_collections == 1 and budget.baseline > 0
    a, b = Node(), Node()
    a.other, b.other = b, a
    dead = weakref.ref(a)
    with gc_paused(budget):  # alive now: frozen with everything else
        pass
    del a, b  # ... and garbage afterwards: only a full collection finds it
    with gc_paused(budget):
        pass
    assert dead() is not None and budget.full_collections == 1
    budget.baseline = 0  # as if the frozen objects had grown by a quarter since
    with gc_paused(budget):
        pass
    assert dead() is None and budget.full_collections == 2


def test_budget_rule_is_a_quarter_of_the_baseline() -> None:
    budget = FrozenBudget()
    budget.baseline = 1000
    assert not budget.full_due(1250)
    assert budget.full_due(1251)
