"""Deficit round robin across flows (tenants) waiting for one shared resource (a model's batch slots).

Every request costs one slot, so a flow's quantum is simply its weight: on its turn a flow may take
up to `weight` slots before the next flow's turn. Under contention the shares are proportional to the
weights, and a flow with thousands of waiters delays another flow by at most one turn.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Flow(Generic[T]):
    items: deque[T] = field(default_factory=deque)
    deficit: int = 0
    # Whether the flow's current quantum has been granted; cleared when its turn ends.
    in_turn: bool = False


class FairQueue(Generic[T]):
    """FIFO per flow, DRR between flows. Not thread-safe: the scheduler calls it from the event loop only."""

    def __init__(self, is_stale: Callable[[T], bool] = lambda _item: False) -> None:
        # Stale items (their waiter has gone away but has not yet run its cleanup) are dropped when
        # they reach the head of their flow, so they neither get a slot nor use up the flow's turn.
        self._is_stale = is_stale
        self._flows: dict[str, _Flow[T]] = {}
        # Flows with waiters, in round-robin order; the head is the flow whose turn it is.
        self._active: deque[str] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def depth(self, flow: str) -> int:
        state = self._flows.get(flow)
        return len(state.items) if state is not None else 0

    def flows(self) -> Iterator[str]:
        return iter(self._active)

    def push(self, flow: str, item: T) -> None:
        state = self._flows.setdefault(flow, _Flow())
        if not state.items:
            # A flow joining the round goes last, as in classic DRR: arriving does not jump the queue.
            self._active.append(flow)
        state.items.append(item)
        self._size += 1

    def remove(self, flow: str, item: T) -> bool:
        """Take `item` out wherever it is; False if it is not queued (already popped or drained)."""
        state = self._flows.get(flow)
        if state is None:
            return False
        try:
            state.items.remove(item)
        except ValueError:
            return False
        self._size -= 1
        if not state.items:
            self._retire(flow)
        return True

    def pop(self, eligible: Callable[[str], bool], weight: Callable[[str], int]) -> tuple[str, T] | None:
        """The next item in fair order among flows for which `eligible(flow)` holds, or None.

        An ineligible flow (its tenant at its concurrency cap) is passed over but stays in the round
        with its deficit, so it loses neither its place nor the rest of its share. Visits each flow at
        most once: O(flows).
        """
        for _ in range(len(self._active)):
            if not self._active:
                break  # stale items emptied the remaining flows
            flow = self._active[0]
            state = self._flows[flow]
            self._drop_stale(flow, state)
            if not state.items:
                continue  # _drop_stale retired it; the next flow is now the head
            if not eligible(flow):
                state.in_turn = False
                self._active.rotate(-1)
                continue
            if not state.in_turn:
                # Carried-over deficit is capped at one quantum so that a flow capped for a long time
                # cannot bank credit and then burst past everyone.
                state.deficit = min(state.deficit, weight(flow)) + weight(flow)
                state.in_turn = True
            item = state.items.popleft()
            self._size -= 1
            state.deficit -= 1
            if not state.items:
                self._retire(flow)
            elif state.deficit < 1:
                state.in_turn = False
                self._active.rotate(-1)
            return flow, item
        return None

    def drain(self) -> list[tuple[str, T]]:
        """Remove and return everything, in no particular fairness order."""
        items = [(flow, item) for flow, state in self._flows.items() for item in state.items]
        self._flows.clear()
        self._active.clear()
        self._size = 0
        return items

    def _drop_stale(self, flow: str, state: _Flow[T]) -> None:
        while state.items and self._is_stale(state.items[0]):
            state.items.popleft()
            self._size -= 1
        if not state.items:
            self._retire(flow)

    def _retire(self, flow: str) -> None:
        # An empty flow leaves the round and forgets its deficit: idle time earns no credit.
        self._active.remove(flow)
        del self._flows[flow]
