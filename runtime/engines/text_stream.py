"""Turning a sequence's token pieces (bytes) into safe text deltas, with stop strings.

Pure logic, shared by every backend that detokenizes incrementally.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextStream:
    """Feed token pieces; get back only text that is final.

    Two things are held back: the bytes of a UTF-8 character split across tokens, and any tail
    of the text that could still grow into a stop string (it must never reach the client).
    """

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._text = ""
        self._emitted = 0
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        """Append a token's bytes; return newly final text. Sets `stopped` on a stop string."""
        if self.stopped:
            return ""
        self._text += self._decoder.decode(piece)
        if self._stop:
            # Only the region that could contain a new match is searched.
            longest = max(len(s) for s in self._stop)
            start = max(0, self._emitted - longest + 1)
            hits = [i for i in (self._text.find(s, start) for s in self._stop) if i >= 0]
            if hits:
                end = min(hits)
                self.stopped = True
                out = self._text[self._emitted : end] if end > self._emitted else ""
                self._emitted = max(self._emitted, end)
                return out
            end = len(self._text) - self._holdback()
        else:
            end = len(self._text)
        out = self._text[self._emitted : end]
        self._emitted = max(self._emitted, end)
        return out

    def flush(self) -> str:
        """At the end of the sequence: whatever is still held back is final."""
        if self.stopped:
            return ""
        self._text += self._decoder.decode(b"", final=True)
        out = self._text[self._emitted :]
        self._emitted = len(self._text)
        return out

    def _holdback(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of a stop string."""
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(self._text)), best, -1):
                if self._text.endswith(s[:n]):
                    best = n
                    break
        return best
