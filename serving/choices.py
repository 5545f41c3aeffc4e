"""One request's choices as batcher updates arrive: text deltas, finish reasons and token counts.

Pure bookkeeping between `serving.batcher.Update` and the OpenAI response shapes, shared by the streamed
and the whole responses so that both say exactly the same thing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from rlvr_jax.serving.batcher import RowState
from rlvr_jax.serving.text import ChoiceText, Decodes


@dataclasses.dataclass
class ChoiceDelta:
    """What changed in one choice: new text, and the finish reason when it just finished."""

    index: int
    text: str
    finish_reason: str | None


class Choices:
    """The choices of one request (row i of the job is choice i)."""

    def __init__(self, tokenizer: Decodes, count: int, stops: Sequence[str] = ()):
        self.texts = [ChoiceText(tokenizer, stops) for _ in range(count)]
        self.finish_reasons: list[str | None] = [None] * count
        self.completion_tokens = [0] * count

    @property
    def done(self) -> bool:
        return all(reason is not None for reason in self.finish_reasons)

    def apply(self, rows: Sequence[RowState]) -> list[ChoiceDelta]:
        """Feeds every unfinished choice its row's tokens; returns the choices that changed."""
        changes = []
        for i, row in enumerate(rows):
            if self.finish_reasons[i] is not None:
                continue
            choice = self.texts[i]
            answer = row.token_ids[:-1] if row.stop_token else row.token_ids
            text = choice.feed(answer, final=row.done)
            self.completion_tokens[i] = len(row.token_ids)
            reason = None
            if choice.stopped or row.stop_token:
                reason = "stop"
            elif row.done:
                reason = "length"
            self.finish_reasons[i] = reason
            if text or reason:
                changes.append(ChoiceDelta(index=i, text=text, finish_reason=reason))
        return changes

    def text(self, i: int) -> str:
        return self.texts[i].text
