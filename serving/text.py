"""From growing lists of generated token ids to text deltas, for streamed and whole responses alike.

Two things make this more than `decode(ids)[len(old):]`:
- a character may span several tokens (byte-level BPE splits UTF-8), so text is only released once it no
  longer ends in an incomplete character (U+FFFD), and tokens are decoded against a short window of the
  ones before them, so that tokenizers that drop or merge leading spaces still give exact deltas;
- a stop string may arrive split over chunks, so text that could be the beginning of one is held back
  until it is clear, and the answer is cut where a stop string starts (the stop string is not returned).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

REPLACEMENT_CHAR = "\ufffd"


class Decodes(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDecoder:
    """Decodes a token sequence that only grows, returning the new text each time it grows.

    `prefix_offset..read_offset` is the window of already-released tokens that new tokens are decoded
    after: the new text is decode(window + new) minus decode(window), which is exact even where a token's
    text depends on its left neighbour.
    """

    def __init__(self, tokenizer: Decodes):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def push(self, ids: Sequence[int], final: bool = False) -> str:
        """`ids` is the whole sequence so far (it extends the previous one); returns the newly stable text.

        With `final`, whatever is left is released even if it ends in an incomplete character.
        """
        if len(ids) < len(self.ids) or list(ids[: len(self.ids)]) != self.ids:
            raise ValueError("IncrementalDecoder.push: the token sequence may only grow")
        self.ids = list(ids)
        if len(self.ids) == self.read_offset:
            return ""
        before = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset])
        after = self.tokenizer.decode(self.ids[self.prefix_offset :])
        if len(after) > len(before) and (final or not after.endswith(REPLACEMENT_CHAR)):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return after[len(before) :]
        return ""


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of `text` could be the start of a stop string (so not yet safe)."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


class ChoiceText:
    """The text of one choice as its tokens arrive: decoded, cut at stop strings, released safely.

    `feed` takes the choice's cumulative generated ids (the stop token, if any, already removed) and
    returns the text to send now. Once a stop string is found the choice is over (`stopped`), whatever
    the sampler does with the rest of the batch.
    """

    def __init__(self, tokenizer: Decodes, stops: Sequence[str] = ()):
        self.decoder = IncrementalDecoder(tokenizer)
        self.stops = [s for s in stops if s]
        self.text = ""  # everything decoded so far (possibly past a stop string)
        self.sent = 0  # characters of `text` already returned
        self.stopped = False
        self.tokens_used = 0  # generated tokens that this choice consumed

    def feed(self, ids: Sequence[int], final: bool) -> str:
        if self.stopped:
            return ""
        self.tokens_used = len(ids)
        search_from = max(0, self.sent - max((len(s) for s in self.stops), default=0))
        self.text += self.decoder.push(ids, final=final)
        cut = self._first_stop(search_from)
        if cut is not None:
            self.stopped = True
            self.text = self.text[:cut]
            end = cut
        elif final:
            end = len(self.text)
        else:
            end = len(self.text) - held_back(self.text, self.stops)
        end = max(end, self.sent)
        delta = self.text[self.sent : end]
        self.sent = end
        return delta

    def _first_stop(self, start: int) -> int | None:
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        return min(hits) if hits else None
