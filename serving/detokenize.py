"""The streaming detokenizer: the text of a growing list of token ids, handed out in pieces that add up to the
answer /score would give. Used by the scorer's streaming generation (serving/scoring.py, Scorer.complete)."""


class Incremental:
    """Text of a growing list of token ids, handed out in pieces that always add up to the final answer: the
    stripped decode /score returns, cut before the first stop string. Held back until they are safe: leading and
    trailing whitespace (the answer is stripped), a partial UTF-8 character, and the tail that may begin a stop."""

    def __init__(self, decode, stops=()):
        self.decode, self.stops, self.ids, self.sent, self.stopped = decode, list(stops), [], "", False
        self.hold = max((len(s) for s in self.stops), default=1) - 1

    def _visible(self, ids) -> str:
        text = self.decode(ids).lstrip()
        text, found = cut_at_stops(text, self.stops)
        self.stopped = self.stopped or found
        return text

    def _hand_out(self, safe: str) -> str:
        if len(safe) <= len(self.sent) or not safe.startswith(self.sent):
            return ""  # nothing new, or a decode that rewrote its past (the final piece settles it)
        piece, self.sent = safe[len(self.sent) :], safe
        return piece

    def push(self, new_ids) -> str:
        if self.stopped:
            return ""
        self.ids += new_ids
        text = self._visible(self.ids)
        if self.stopped:
            return self._hand_out(text.rstrip())
        safe = text[: max(len(text) - self.hold, 0)].rstrip().rstrip("\ufffd")
        return self._hand_out(safe)

    def finish(self, all_ids) -> str:
        """The last piece, from every generated id."""
        stopped, self.stopped = self.stopped, False
        final = self._visible(list(all_ids)).strip()
        self.stopped = self.stopped or stopped
        if not final.startswith(self.sent):
            return ""
        return self._hand_out(final)


def cut_at_stops(text: str, stops) -> tuple[str, bool]:
    """(text before the first stop string, whether one was found): for whole answers, as Incremental does."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)].rstrip(), True) if hits else (text, False)
