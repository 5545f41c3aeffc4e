"""One request's choices as batcher updates arrive: text deltas, log-probs, finish reasons, token counts.

Pure bookkeeping between `serving.batcher.Update` and the OpenAI response shapes, shared by the streamed
and the whole responses so that both say exactly the same thing.

Log-probs (when the request asked): one entry per token of the returned text, released together with
the text it belongs to. A token is released once text from its start on has been sent (so a token whose
characters are held back, as the possible start of a stop string, waits with them); once a choice ends,
the rest are released, except tokens that start at or after the point where a stop string cut the text,
and the stop token, which are not part of the text. Each entry's `offset` is where the token starts in the
choice's text, in characters; special tokens (left out of the text) take no characters. With `echo` the
prompt comes first: its text, and, with log-probs, its tokens' entries (the first with no log-prob).
"""

from __future__ import annotations

import codecs
import dataclasses
from collections.abc import Sequence

from rlvr_jax.serving.batcher import RowState, TopLogprobs
from rlvr_jax.serving.text import ChoiceText, Decodes
from rlvr_jax.serving.tokens import TokenTexts


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    """One token of a choice's text: its log-prob (None for a prompt's first token) and alternatives."""

    token_id: int
    logprob: float | None
    top: TopLogprobs
    offset: int  # characters of the choice's text before this token


@dataclasses.dataclass
class ChoiceDelta:
    """What changed in one choice: new text, its tokens' log-probs, and the finish reason when it just
    finished."""

    index: int
    text: str
    finish_reason: str | None
    logprobs: list[TokenLogprob] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Echo:
    """A prompt to return before a choice's completion (the completions API's `echo`)."""

    text: str
    token_ids: tuple[int, ...]


class _Offsets:
    """Start offsets (in characters) of a growing token sequence, from the tokens' exact bytes."""

    def __init__(self, texts: TokenTexts, start: int = 0):
        self.texts = texts
        self.chars = start
        self.starts: list[int] = []
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def extend(self, ids: Sequence[int]) -> None:
        for token_id in ids[len(self.starts) :]:
            self.starts.append(self.chars)
            if self.texts.visible(token_id):
                self.chars += len(self._utf8.decode(self.texts.token_bytes(token_id)))


class Choices:
    """The choices of one request (row i of the job is choice i).

    logprobs: the server's token texts when the request asked for log-probs (None: it did not). echo: per
    choice, the prompt to return first.
    """

    def __init__(
        self,
        tokenizer: Decodes,
        count: int,
        stops: Sequence[str] = (),
        *,
        logprobs: TokenTexts | None = None,
        echo: Sequence[Echo] | None = None,
    ):
        self.texts = [ChoiceText(tokenizer, stops) for _ in range(count)]
        self.finish_reasons: list[str | None] = [None] * count
        self.completion_tokens = [0] * count
        self.token_texts = logprobs
        self.echo = list(echo) if echo is not None else None
        self.started = [False] * count
        shift = [len(e.text) for e in self.echo] if self.echo is not None else [0] * count
        self.offsets = [_Offsets(logprobs, s) for s in shift] if logprobs is not None else []
        self.released = [0] * count  # generated tokens whose entries went out
        self.entries: list[list[TokenLogprob]] = [[] for _ in range(count)]  # everything released

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
            entries = self._released(i, row, answer, choice, final=reason is not None)
            if not self.started[i]:
                self.started[i] = True
                if self.echo is not None:
                    text = self.echo[i].text + text
                    entries = self._prompt_entries(i, row) + entries
            self.entries[i] += entries
            if text or reason or entries:
                changes.append(ChoiceDelta(index=i, text=text, finish_reason=reason, logprobs=entries))
        return changes

    def _released(
        self, i: int, row: RowState, answer: Sequence[int], choice: ChoiceText, final: bool
    ) -> list[TokenLogprob]:
        """The generated tokens' entries that go out with this update (see the module docstring)."""
        if self.token_texts is None:
            return []
        offsets = self.offsets[i]
        offsets.extend(answer)
        base = len(self.echo[i].text) if self.echo is not None else 0
        if choice.stopped:
            upto = sum(1 for s in offsets.starts if s < base + len(choice.text))
        elif final:
            upto = len(answer)
        else:
            upto = sum(1 for s in offsets.starts if s < base + choice.sent)
        start, self.released[i] = self.released[i], max(self.released[i], upto)
        return [
            TokenLogprob(
                token_id=answer[j],
                logprob=row.logprobs[j],
                top=row.top_logprobs[j] if row.top_logprobs else (),
                offset=offsets.starts[j],
            )
            for j in range(start, self.released[i])
        ]

    def _prompt_entries(self, i: int, row: RowState) -> list[TokenLogprob]:
        """An echoed prompt's entries: its tokens, log-probs and alternatives (from the row's scores)."""
        if self.token_texts is None or self.echo is None:
            return []
        ids = self.echo[i].token_ids
        if len(row.prompt_logprobs) != len(ids):
            raise RuntimeError(
                f"the engine scored {len(row.prompt_logprobs)} of the prompt's {len(ids)} tokens; a job that "
                "echoes log-probs must ask for prompt_logprobs"
            )
        offsets = _Offsets(self.token_texts)
        offsets.extend(ids)
        tops = row.prompt_top_logprobs or ((),) * len(ids)
        return [
            TokenLogprob(token_id=t, logprob=lp, top=top, offset=at)
            for t, lp, top, at in zip(ids, row.prompt_logprobs, tops, offsets.starts, strict=True)
        ]

    def text(self, i: int) -> str:
        """Choice i's whole text as returned: the echoed prompt, if any, then the completion."""
        return (self.echo[i].text if self.echo is not None else "") + self.texts[i].text

    def completion(self, i: int) -> str:
        """Choice i's completion alone (what drift monitoring compares)."""
        return self.texts[i].text
