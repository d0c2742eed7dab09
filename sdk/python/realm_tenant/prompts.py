"""Chat templates for the models Realm ships: `generate` takes raw text, so tenants template
their prompts themselves (the model decides the format, not the SDK)."""

from __future__ import annotations

from collections.abc import Iterable

# Stop strings that end an assistant turn in each template.
CHATML_STOP = ("<|im_end|>",)
GEMMA_STOP = ("<end_of_turn>",)


def chatml(user: str, *, system: str | None = None, history: Iterable[tuple[str, str]] = ()) -> str:
    """ChatML (SmolLM2): optional system turn, (role, text) history, one user turn, then the
    assistant's turn left open for the model."""
    parts = []
    if system is not None:
        parts.append(f"<|im_start|>system\n{system}<|im_end|>\n")
    parts += [f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in history]
    parts.append(f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
    return "".join(parts)


def gemma(user: str, *, history: Iterable[tuple[str, str]] = ()) -> str:
    """Gemma 3's template: roles are "user" and "model"; it has no system turn."""
    parts = [f"<start_of_turn>{role}\n{text}<end_of_turn>\n" for role, text in history]
    parts.append(f"<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n")
    return "".join(parts)
