"""The blob-reference state machine: every (state, event) pair, and idempotency."""

from __future__ import annotations

import pytest

from blobledger.schemas.lifecycle import Transition, UploadState, on_compensation, on_completion

P, S, C = UploadState.PENDING, UploadState.STORED, UploadState.COMPENSATED
ORPH = UploadState.ORPHANED


def test_pending_completion_finalizes_when_current() -> None:
    assert on_completion(P, is_current=True) == Transition(S, finalize=True)


def test_pending_completion_not_current_orphans_the_bytes() -> None:
    # superseded by a newer attach, object deleted, or hash not as declared
    assert on_completion(P, is_current=False) == Transition(ORPH, finalize=False)


def test_completion_after_compensation_orphans_and_never_finalizes() -> None:
    for current in (True, False):
        assert on_completion(C, is_current=current) == Transition(ORPH, finalize=False)


@pytest.mark.parametrize("state", [S, ORPH])
@pytest.mark.parametrize("current", [True, False])
def test_redelivered_completion_changes_nothing(state: UploadState, current: bool) -> None:
    assert on_completion(state, is_current=current) == Transition(state, finalize=False)


def test_compensation_rolls_back_pending_only() -> None:
    assert on_compensation(P) == Transition(C)
    for state in (S, C, ORPH):
        assert on_compensation(state) == Transition(state)


def test_terminal_states() -> None:
    assert not P.terminal and all(s.terminal for s in (S, C, ORPH))


def test_states_are_the_read_model_strings() -> None:
    assert {s.value for s in UploadState} == {"pending", "stored", "compensated", "orphaned"}
    assert UploadState("orphaned") is ORPH


def test_any_sequence_reaches_one_terminal_state_and_finalizes_at_most_once() -> None:
    """Whatever order completions and compensations arrive in (redelivery, reaper races),
    an upload is finalized at most once and ends terminal."""
    import itertools

    for seq in itertools.product(["stored", "failed"], repeat=4):
        state, finalized = P, 0
        for kind in seq:
            t = (
                on_completion(state, is_current=True)
                if kind == "stored"
                else on_compensation(state)
            )
            finalized += t.finalize
            state = t.state
        assert state.terminal and finalized <= 1
        assert (finalized == 1) == (seq[0] == "stored")
