"""Output constraints as serving checks them, for every door (HTTP `response_format`, ABI options).

A door turns its own request shape into an engine `Constraint` and calls `checked_constraint`
before admission, so a schema that does not compile is a 400 / `invalid-constraint` rather than a
failed stream. The engine caches what it compiled, so the generation that follows reuses it.
"""

from __future__ import annotations

from ..engines.base import Constraint, ConstraintError, Engine
from .errors import InvalidConstraint, InvalidRequest

# Compiling grows with the grammar; a constraint is a request field, not a document store.
MAX_CONSTRAINT_CHARS = 64 * 1024


def checked_constraint(engine: Engine, constraint: Constraint) -> Constraint:
    """`constraint` once the engine has compiled it for its model; InvalidConstraint saying why not.

    Compiling runs on the caller's thread: the first constraint of a model also builds its token
    table (a fraction of a second), later ones hit the engine's cache.
    """
    if len(constraint.value) > MAX_CONSTRAINT_CHARS:
        raise InvalidConstraint(
            f"The {constraint.kind} constraint is {len(constraint.value)} characters; "
            f"at most {MAX_CONSTRAINT_CHARS} are accepted."
        )
    try:
        engine.check_constraint(constraint)
    except ConstraintError as e:
        message = str(e)
        raise InvalidConstraint(message[:1].upper() + message[1:]) from e
    return constraint


def local_only(model: str, feature: str) -> InvalidRequest:
    """The refusal for a constrained or sampled request whose model only another pod serves: the
    cross-pod path (serving/remote.py) carries neither a constraint nor a step controller."""
    return InvalidRequest(
        f"The model '{model}' is not served here, and {feature} needs a model served on this pod.",
        code="model_not_served_here",
    )
