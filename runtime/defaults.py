"""The default models meltok has shipped (``runtime/models/default``, ``meltok/assets``), oldest first,
and what to tell a user whose tokens came from one of them.

A new default changes the model id, so token files and datasets made with an earlier default are
refused by the new one; the refusal names the earlier default and how to decode its tokens. The
README's table "Default models" lists the same entries (a test holds them together)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ShippedDefault:
    """One default model: ``version`` (``default vN``), its ``model_id``, the meltok ``release`` that
    ships it, and what turns its tokens into audio."""

    version: int
    model_id: str
    release: str
    decoder: str

    @property
    def name(self) -> str:
        return f"meltok's default model v{self.version} ({self.model_id}, meltok {self.release})"


SHIPPED_DEFAULTS = (
    ShippedDefault(1, "meltok-edge:e219538591c9", "0.1.0", "neural vocoder: decoder copy, Vocos backbone, ISTFT head"),
)


def shipped_default(model_id: str | None) -> ShippedDefault | None:
    """The shipped default with ``model_id``, or None."""
    return next((entry for entry in SHIPPED_DEFAULTS if entry.model_id == model_id), None)


def mismatch_message(source, made_by: str, model_id: str) -> str:
    """One line: ``source`` holds tokens of ``made_by``, which the model ``model_id`` does not decode."""
    earlier = shipped_default(made_by)
    if earlier is None:
        return (f"{source} was made by model {made_by!r} but this model is {model_id!r}; "
                "decode it with the model that encoded it")
    return (f"{source} was made by {earlier.name} but this model is {model_id!r}; decode it with that default: "
            f"pip install meltok=={earlier.release} (its bundle runtime/models/default), or -b a bundle of "
            f"{earlier.model_id}")
