"""The picker: rendezvous hashing of the route key, bounded by load, then the shortest queue."""

from __future__ import annotations

from realm.runtime.peers import Endpoint, pick
from realm.runtime.peers.picker import rank, rendezvous_key

PODS = [Endpoint(f"10.0.0.{i}", 8081, f"pod-{i}") for i in range(1, 6)]


def test_every_caller_ranks_the_pods_the_same_whatever_their_order() -> None:
    key = rendezvous_key("acme", "gemma", "You are a helpful assistant.")
    assert rank(PODS, key) == rank(list(reversed(PODS)), key)


def test_a_prefix_goes_to_its_top_pod_while_loads_are_even() -> None:
    key = rendezvous_key("acme", "gemma", "You are a helpful assistant.")
    assert pick(PODS, key, lambda ep: 0) == rank(PODS, key)[0]


def test_the_top_pod_over_the_bounded_load_gives_way_to_the_least_loaded() -> None:
    key = rendezvous_key("acme", "gemma", "You are a helpful assistant.")
    top, *others = rank(PODS, key)
    loads = {top: 4, **{ep: 1 for ep in others}}
    loads[others[2]] = 0
    # Mean with the new call: (4 + 3 + 1) / 5 = 1.8; bound 1.25 gives a cap of 3, below the top's 4 + 1.
    assert pick(PODS, key, loads.__getitem__) == others[2]


def test_the_top_pod_within_the_bound_keeps_the_call() -> None:
    key = rendezvous_key("acme", "gemma", "You are a helpful assistant.")
    top, *others = rank(PODS, key)
    loads = {top: 1, **{ep: 1 for ep in others}}
    assert pick(PODS, key, loads.__getitem__) == top


def test_only_the_first_block_of_the_prompt_chooses() -> None:
    system = "s" * 256
    assert rendezvous_key("acme", "gemma", system + "one question") == rendezvous_key(
        "acme", "gemma", system + "another"
    )


def test_no_endpoint_is_no_pick() -> None:
    assert pick([], "k", lambda ep: 0) is None
