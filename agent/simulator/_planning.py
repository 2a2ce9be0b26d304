"""What a generation request will produce, decided up front (pure).

Output length follows vLLM's rules over a simulated model whose answer ends by
itself ("emits EOS") after ``--output-tokens`` tokens:

* ``max_tokens`` (or ``max_completion_tokens``) caps every choice; without it the cap
  is what the context leaves (``max_model_len - prompt``);
* ``ignore_eos`` makes a choice run to the cap exactly (``finish_reason "length"``);
* otherwise a choice stops at the natural length (``"stop"``), or earlier at the cap
  (``"length"``). Words already in a continued final message count towards the
  natural length, so a continued answer ends where the uninterrupted one would.

A prompt longer than the context, or a cap past it, is vLLM's 400.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from sage.unified.agent.simulator._errors import BadRequestError
from sage.unified.agent.simulator._requests import GenerationRequest
from sage.unified.agent.simulator._text import generate_words
from sage.unified.agent.simulator._tokenizer import Tokenizer, piece_ids

__all__ = ["GenerationPlan", "Usage", "plan_generation"]


@dataclass(slots=True)
class Usage:
    """Token counts of one answer (``cached_tokens``: prompt tokens found in the cache)."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


# Not frozen (a frozen dataclass's __init__ costs a microsecond on the hot path), but
# treated as immutable: plans are memoized and shared; only the two memos are written.
@dataclass(slots=True)
class GenerationPlan:
    """The prompts' tokens and the tokens of every choice.

    Attributes:
        prompt_ids: token ids per prompt.
        choices: generated tokens (text pieces) per choice, prompt-major then ``n``.
        n: choices per prompt.
        finish_reason: ``"stop"`` or ``"length"`` (all choices have the same length).
        steps: tokens per choice.
        prompt_tokens: prompt tokens over all prompts.
        completion_tokens: generated tokens over all choices (vLLM's usage sums them).
    """

    prompt_ids: tuple[list[int], ...]
    choices: tuple[tuple[str, ...], ...]
    n: int
    finish_reason: str
    steps: int
    prompt_tokens: int
    completion_tokens: int
    _needs: list[tuple[list[int], int]] | None = field(default=None, repr=False)
    _final: list[list[int]] | None = field(default=None, repr=False)

    @classmethod
    def build(
        cls,
        prompt_ids: tuple[list[int], ...],
        choices: tuple[tuple[str, ...], ...],
        n: int,
        finish_reason: str,
    ) -> GenerationPlan:
        """A plan with its counts filled in."""
        steps = len(choices[0]) if choices else 0
        prompt_tokens = sum(map(len, prompt_ids))
        return cls(
            prompt_ids, choices, n, finish_reason, steps, prompt_tokens, steps * len(choices)
        )

    def kv_needs(self) -> list[tuple[list[int], int]]:
        """Per prompt: its tokens and the tokens it may reach with all its choices."""
        if self._needs is None:
            grow = self.n * self.steps
            self._needs = [(ids, len(ids) + grow) for ids in self.prompt_ids]
        return self._needs

    def sequence_tokens(self, steps_done: int) -> list[list[int]]:
        """Per prompt: prompt ids plus its first choice's first ``steps_done`` tokens."""
        if steps_done == self.steps and self._final is not None:
            return self._final
        n = self.n
        tokens = [
            ids + list(piece_ids(self.choices[i * n])[:steps_done])
            for i, ids in enumerate(self.prompt_ids)
        ]
        if steps_done == self.steps:
            self._final = tokens
        return tokens


def _context_error(max_model_len: int, prompt: int, max_tokens: int | None) -> BadRequestError:
    if max_tokens is None:
        return BadRequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"request has {prompt} input tokens. Please reduce the length of the input "
            "messages.",
            param="messages",
        )
    return BadRequestError(
        f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's "
        f"maximum context length is {max_model_len} tokens and your request has {prompt} "
        f"input tokens ({max_tokens} > {max_model_len} - {prompt}).",
        param="max_tokens",
    )


def plan_generation(
    req: GenerationRequest,
    tokenizer: Tokenizer,
    *,
    natural_tokens: int,
    max_model_len: int,
    seed: int,
) -> GenerationPlan:
    """Tokenize the prompts and decide every choice's tokens (module docstring).

    The output is a pure function of (prompt, choice index, seed, lengths), so plans
    of one-prompt text requests are memoized: a benchmark's repeated request costs a
    lookup, and the returned plan must not be mutated.

    Raises:
        BadRequestError: a prompt of ``max_model_len`` tokens or more, or a
            ``max_tokens`` that does not fit beside the longest prompt.
    """
    args = (req.n, req.max_tokens, req.ignore_eos, req.continued_words)
    limits = (natural_tokens, max_model_len, seed)
    if req.prompt_ids is None and len(req.prompts) == 1:
        return _plan_text(req.prompts[0], *args, *limits, tokenizer)
    ids = req.prompt_ids or [tokenizer.encode(text) for text in req.prompts]
    return _plan(req.prompts, ids, *args, *limits)


@lru_cache(maxsize=128)
def _plan_text(
    prompt: str,
    n: int,
    max_tokens: int | None,
    ignore_eos: bool,
    continued_words: int,
    natural_tokens: int,
    max_model_len: int,
    seed: int,
    tokenizer: Tokenizer,
) -> GenerationPlan:
    return _plan(
        [prompt],
        [tokenizer.encode(prompt)],
        n,
        max_tokens,
        ignore_eos,
        continued_words,
        natural_tokens,
        max_model_len,
        seed,
    )


def _plan(
    prompts: Sequence[str],
    prompt_ids: Sequence[list[int]],
    n: int,
    max_tokens: int | None,
    ignore_eos: bool,
    continued_words: int,
    natural_tokens: int,
    max_model_len: int,
    seed: int,
) -> GenerationPlan:
    longest = max(map(len, prompt_ids))
    if longest >= max_model_len:
        raise _context_error(max_model_len, longest, None)
    if max_tokens is not None and longest + max_tokens > max_model_len:
        raise _context_error(max_model_len, longest, max_tokens)
    cap = max_tokens if max_tokens is not None else max_model_len - longest
    natural = max(1, natural_tokens - continued_words)
    if ignore_eos or cap < natural:
        count, reason = cap, "length"
    else:
        count, reason = natural, "stop"
    choices = tuple(
        generate_words(text, seed, choice, count) for text in prompts for choice in range(n)
    )
    return GenerationPlan.build(tuple(prompt_ids), choices, n, reason)
