"""Stop-word spotters: the small interface ReplyOnStopWords calls, and a default that works offline.

A spotter is any callable from ``(sample_rate, samples)`` (int16 or float32
mono, the turn so far) to a ``Heard``, a bool, ``None`` or a transcript ``str``
(matched against the stop words with ``match_stop_words``). So a user plugs in
their own speech-to-text or keyword model in a line. The server calls it off the
event loop, in a thread, only on speech.

``PocketSphinxSpotter`` is the default: CMU PocketSphinx's keyphrase search with
the English acoustic model and dictionary its package ships (nothing is
downloaded). Measured on tests/data/stopwords (espeak-ng voices, synthetic) it
is weak: see the closing note of issue 14; a plugged-in recogniser does better.
"""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import soxr

DEFAULT_THRESHOLD = 1e-30  # keyphrase search: lower hears more, and more falsely (none false on our set)
MAX_DECODERS = 4  # each holds the acoustic model (~30 MB): a few, shared by every stream


@dataclass(frozen=True)
class Heard:
    """A stop word heard: the word as configured, and where in the audio it ended (s), when known."""

    word: str
    end_s: float | None = None


SpotResult = Heard | bool | str | None
Spotter = Callable[[tuple[int, np.ndarray]], SpotResult]


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def match_stop_words(text: str, stop_words: Sequence[str]) -> str | None:
    """The first stop word (or phrase) found in ``text`` as whole words, case and punctuation ignored."""
    words = _words(text)
    for stop in stop_words:
        want = _words(stop)
        n = len(want)
        if n and any(words[i:i + n] == want for i in range(len(words) - n + 1)):
            return stop
    return None


def resolve(result: SpotResult, stop_words: Sequence[str]) -> Heard | None:
    """Any spotter's answer as a Heard or None; ``True`` means the first stop word."""
    if isinstance(result, Heard):
        return result
    if result is True:
        return Heard(stop_words[0])
    if isinstance(result, str):
        word = match_stop_words(result, stop_words)
        return None if word is None else Heard(word)
    return None


def pocketsphinx_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("pocketsphinx") is not None


class PocketSphinxSpotter:
    """Keyphrase search over the stop words; thread-safe through a small pool of decoders."""

    def __init__(self, stop_words: Sequence[str], *, threshold: float = DEFAULT_THRESHOLD) -> None:
        try:
            import pocketsphinx
        except ImportError:
            raise ImportError("the default stop-word spotter needs pocketsphinx: "
                              "pip install 'wsstream[stopwords]' (or give ReplyOnStopWords a spotter)") from None
        self._ps = pocketsphinx
        self.stop_words = tuple(stop_words)
        self.threshold = threshold
        self._pool: queue.LifoQueue[object] = queue.LifoQueue()
        self._made = 0
        self._lock = threading.Lock()
        probe = self._new()
        unknown = [w for phrase in self.stop_words for w in _words(phrase) if probe.lookup_word(w) is None]
        if unknown:
            raise ValueError(f"not in PocketSphinx's English dictionary: {', '.join(unknown)}; spell it "
                             "differently, or give ReplyOnStopWords a spotter of your own")
        self._pool.put(probe)

    def _new(self) -> object:
        with self._lock:
            self._made += 1
        lines = "\n".join(f"{' '.join(_words(w))} /{self.threshold:g}/" for w in self.stop_words)
        decoder = self._ps.Decoder(loglevel="ERROR")
        decoder.add_kws("stop_words", _kws_file(lines))
        decoder.activate_search("stop_words")
        return decoder

    def __call__(self, audio: tuple[int, np.ndarray]) -> Heard | None:
        rate, samples = audio
        x = np.asarray(samples)
        if x.dtype != np.int16:
            x = (np.clip(x.astype(np.float32), -1.0, 1.0) * 32767).astype(np.int16)
        if rate != 16000:
            x = soxr.resample(x, rate, 16000)
        try:
            decoder = self._pool.get_nowait()
        except queue.Empty:
            decoder = self._new() if self._made < MAX_DECODERS else self._pool.get()
        try:
            decoder.start_utt()  # type: ignore[attr-defined]
            decoder.process_raw(np.ascontiguousarray(x, dtype=np.int16).tobytes(), False, True)  # type: ignore
            decoder.end_utt()  # type: ignore[attr-defined]
            if decoder.hyp() is None:  # type: ignore[attr-defined]
                return None
            segs = list(decoder.seg())  # type: ignore[attr-defined]
        finally:
            self._pool.put(decoder)
        for seg in segs:
            word = match_stop_words(seg.word, self.stop_words)
            if word is not None:
                return Heard(word, end_s=seg.end_frame / 100.0)  # (frames of 10 ms)
        return Heard(self.stop_words[0])


def _kws_file(lines: str) -> str:
    """PocketSphinx reads keyphrases from a file: one per line, with its threshold."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".kws", delete=False) as f:
        f.write(lines + "\n")
        return f.name
