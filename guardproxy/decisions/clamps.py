"""What a body may ask of the GPU: placement options (admin keys only), and a key's max_num_ctx and
max_output_tokens, lowered in the body.  Pure logic: no asyncio.

Ollama reads `options` as a map (exact names, api.Options.FromMap: a float
is truncated to an int) on its own /api routes only; each other dialect
has its own output cap, which Ollama turns into options.num_predict:

    /api/generate, /api/chat   options.num_predict    absent, null or negative: unlimited
    /v1/chat/completions,      max_tokens,            absent, null or negative: unlimited
      /v1/completions          max_completion_tokens  (OpenAI's newer name; set too, for newer servers)
    /v1/responses              max_output_tokens      absent, null or negative: unlimited
    /v1/messages               max_tokens             Ollama requires it; thinking.budget_tokens stays below

A value of the wrong type is left alone: Ollama refuses the body itself.
"""

from __future__ import annotations

from typing import Any

from ..config.model import KeyEntry
from ..wire.errors import Forbidden
from . import routes
from .json_members import JsonObject, MergedObject

# api.Runner's placement fields: which GPUs and threads a model loads on, and how.
PLACEMENT = ("num_gpu", "main_gpu", "num_thread", "num_batch", "use_mmap", "draft_num_predict")
PLACEMENT_BYTES = tuple(name.encode() for name in PLACEMENT)


def mentions_placement(body: bytes | bytearray) -> bool:
    """Whether a placement option's name appears anywhere in the body (then it is parsed)."""
    for name in PLACEMENT_BYTES:
        if body.find(name) >= 0:
            return True
    return False
# The options whose values are read; the others keep their text unread.
READ_OPTIONS = frozenset(PLACEMENT + ("num_ctx", "num_predict"))
# The top-level fields read here (as Go folds them).
TOP_FIELDS = frozenset({"max_tokens", "max_completion_tokens", "max_output_tokens", "thinking"})

_TOP_CAPS = {routes.OPENAI: ("max_tokens", "max_completion_tokens"), routes.RESPONSES: ("max_output_tokens",),
             routes.ANTHROPIC: ("max_tokens",)}


def edits_body(key: KeyEntry, route: routes.Route) -> bool:
    """Whether this key's limits may rewrite a body on this route."""
    return bool((key.max_num_ctx and route.options) or (key.max_output_tokens and route.output_cap))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _lowered(value: Any, limit: int, *, floor: int = 0) -> bool:
    """Above the limit, or unlimited (absent, null, below `floor`): the cap is written."""
    return value is None or (_number(value) and (value < floor or value > limit))


def check_placement(key: KeyEntry, options: MergedObject) -> None:
    if key.admin:
        return
    for name in PLACEMENT:
        if name in options.values:
            raise Forbidden(f"this key may not set option {name!r} (placement options are for admin keys)")


def apply(key: KeyEntry, route: routes.Route, body: JsonObject, options: MergedObject | None) -> list[str]:
    """Lower what the key's limits bound, in `body` (and `options`, the merged options map on the
    routes whose options Ollama honours); the names of the fields changed."""
    clamped: list[str] = []
    ctx = key.max_num_ctx
    if ctx and options is not None:
        value = options.get("num_ctx")
        if _number(value) and value > ctx:
            options.set("num_ctx", str(ctx))
            clamped.append("options.num_ctx")
    cap = key.max_output_tokens
    if cap and route.output_cap == routes.OLLAMA and options is not None:
        if _lowered(options.get("num_predict"), cap):
            options.set("num_predict", str(cap))
            clamped.append("options.num_predict")
    elif cap and route.output_cap in _TOP_CAPS:
        for field in _TOP_CAPS[route.output_cap]:
            # Anthropic's max_tokens must be positive (Ollama refuses 0): a missing one is set.
            if _lowered(body.last(field), cap, floor=1 if route.output_cap == routes.ANTHROPIC else 0):
                body.set(field, str(cap))
                clamped.append(field)
        if route.output_cap == routes.ANTHROPIC:
            final = cap if "max_tokens" in clamped else body.last("max_tokens")
            clamped += _thinking_below(body, final if _number(final) else cap)
    if options is not None:
        options.apply()
    return clamped


def _thinking_below(body: JsonObject, limit: float) -> list[str]:
    """Anthropic's thinking.budget_tokens must stay below max_tokens (`limit`, as forwarded)."""
    if not body.named("thinking"):
        return []
    thinking = MergedObject(body, "thinking", frozenset({"budget_tokens"}), folded_inner=True)
    budget = thinking.get("budget_tokens")
    if not (_number(budget) and budget >= limit):
        return []
    thinking.set("budget_tokens", str(max(int(limit) - 1, 0)))
    thinking.apply()
    return ["thinking.budget_tokens"]
