"""Stop-word spotting: does a short stretch of a speaker's audio contain a stop word?

ReplyOnStopWords keeps an agent quiet until the caller says a stop word
("computer", "hey assistant"). The server asks a *spotter* about the last few
seconds of the current turn, off the event loop, only while the VAD hears
speech. Anything callable as a :data:`Spotter` will do, so a speech-to-text
model or a keyword model of the user's own plugs in with a line::

    ReplyOnStopWords(handler, stop_words=["computer"], spotter=lambda audio: my_stt(audio))

The default, :class:`PocketSphinxSpotter`, runs CMU PocketSphinx's keyphrase
search with the English model its wheel ships: no download, no network. It holds
the GIL while it decodes, so the server runs it in worker processes
(:class:`ProcessPoolSpotter`, what :func:`default_spotter` builds): a spotter of
your own that does the same (pure-Python or a GIL-holding extension) should be
wrapped the same way. Those workers start by ``spawn``: a script that starts the
server must do so under ``if __name__ == "__main__":``, as any multiprocessing
program (the CLI and ASGI servers such as uvicorn do).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import re
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import soxr

__all__ = [
    "DEFAULT_LOG10_THRESHOLD_PER_PHONE",
    "Heard",
    "PocketSphinxSpotter",
    "ProcessPoolSpotter",
    "SpotResult",
    "Spotter",
    "default_spotter",
    "match_stop_words",
    "pocketsphinx_available",
    "resolve",
]

_INSTALL_HINT = "pip install 'wsstream[stopwords]'"


@dataclass(frozen=True)
class Heard:
    """A stop word was heard: which one (as configured) and where it ended, when the engine knows."""

    word: str
    end_s: float | None = None  # seconds from the start of the audio the spotter was given


SpotResult: TypeAlias = bool | str | Heard | None
"""What a spotter returns: a :class:`Heard`; ``True``/``False``; ``None`` (nothing
heard); or a transcript (``str``) that :func:`resolve` matches against the stop
words with :func:`match_stop_words`."""

Spotter: TypeAlias = Callable[[tuple[int, np.ndarray]], SpotResult]
"""A stop-word spotter: ``spotter((sample_rate, samples)) -> SpotResult``.

``samples`` is mono int16 or float32 (full scale ±1.0) at ``sample_rate``, any
rate from 8000 to 48000 Hz: the last couple of seconds of the current turn. It
is called from worker threads, possibly several at once, so it must be
thread-safe and must not touch the event loop. Returning a transcript lets any
speech-to-text engine serve as a spotter without knowing the stop words.
"""

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def _words(text: str) -> list[str]:
    """Lower-case words, punctuation dropped; an apostrophe inside a word keeps it one word ("what's")."""
    return _WORD.findall(text.casefold())


def match_stop_words(text: str, stop_words: Sequence[str]) -> str | None:
    """The first configured stop word (or phrase) found in ``text`` as whole words, else None.

    Case and punctuation are ignored and a phrase matches across any spacing, so
    a transcript's formatting doesn't matter ("Computer, what time" and
    "hey   assistant!" match), but a word must match whole ("computers" is not
    "computer"), since a stop word that fires inside longer words would wake
    the agent all the time. Order is the configuration's, not the text's.
    """
    said = _words(text)
    if not said:
        return None
    padded = " " + " ".join(said) + " "
    for stop in stop_words:
        want = _words(stop)
        if want and f" {' '.join(want)} " in padded:
            return stop
    return None


def resolve(result: SpotResult, stop_words: Sequence[str]) -> Heard | None:
    """Any :data:`SpotResult` as a :class:`Heard` or None, the one form the server acts on.

    ``True`` (a spotter that only says yes or no) means the first configured
    stop word, with no end time: a yes/no spotter cannot say which word it was.
    A transcript is matched with :func:`match_stop_words`. A :class:`Heard` is
    returned as it is, so a spotter may report a word outside ``stop_words``.
    """
    if result is None or isinstance(result, Heard):
        return result
    if isinstance(result, bool | np.bool_):
        if not result:
            return None
        if not stop_words:
            raise ValueError("a spotter returned True but no stop words are configured")
        return Heard(stop_words[0])
    if isinstance(result, str):
        word = match_stop_words(result, stop_words)
        return None if word is None else Heard(word)
    raise TypeError(f"a spotter must return Heard, bool, str or None, not {type(result).__name__}")


def pocketsphinx_available() -> bool:
    """Whether the default spotter can run (the ``stopwords`` extra is installed)."""
    return importlib.util.find_spec("pocketsphinx") is not None


def _import_pocketsphinx() -> Any:
    try:
        import pocketsphinx
    except ImportError as exc:
        raise ImportError(
            f"the default stop-word spotter needs PocketSphinx: {_INSTALL_HINT} "
            "(or pass a spotter of your own)") from exc
    return pocketsphinx


@functools.lru_cache(maxsize=4)
def _lexicon(path: str) -> dict[str, tuple[str, ...]]:
    """CMUdict as {word: (pronunciation, ...)}, read once per process (about 0.2 s, 20 MB)."""
    lexicon: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            head, _, phones = line.strip().partition(" ")
            if phones:
                lexicon.setdefault(re.sub(r"\(\d+\)$", "", head), []).append(phones.strip())
    return {word: tuple(prons) for word, prons in lexicon.items()}


DEFAULT_LOG10_THRESHOLD_PER_PHONE = -3.75
"""The default keyphrase threshold is ``10 ** (this × phones in the phrase)``:
1e-40 for "computer" (8 phones), the value benchmarks/stopwords.py picked on
the synthetic set. PocketSphinx's threshold is a likelihood ratio over the
whole phrase, so a longer phrase needs a proportionally smaller one."""

_RATE = 16000  # the acoustic model's rate
_FRAME_RATE = 100  # PocketSphinx frames per second
# Deterministic dither, about -60 dBFS: digital silence (a browser's noise suppressor, a
# jitter buffer's zero fill, synthetic speech) sends PocketSphinx's cepstra to -inf-like
# values and its noise and mean estimates off; real microphones never give exact zeros.
_DITHER = np.random.default_rng(20240514).normal(0.0, 1e-3, _RATE * 4).astype(np.float32)


class PocketSphinxSpotter:
    """The default :data:`Spotter`: PocketSphinx keyphrase search for the configured stop words.

    Thread-safe: concurrent calls each borrow a decoder from a pool of at most
    ``max_decoders`` (further callers wait), created on first need. A decoder
    holds the keyphrase search only (its dictionary is just the stop words), so
    each costs little memory; the acoustic model is memory-mapped and shared.
    Every call starts from the same decoder state, so the answer for a given
    window never depends on what the decoder heard before.

    ``threshold`` is PocketSphinx's ``kws_threshold`` (a likelihood ratio, e.g.
    1e-40; smaller hears more and false-fires more), one for every stop word or
    a mapping per stop word; words it does not name get the default, scaled by
    phrase length (:data:`DEFAULT_LOG10_THRESHOLD_PER_PHONE`). ``pronunciations``
    adds words the dictionary lacks, in its ARPAbet phones
    (``{"wsstream": "W IH Z S T R IY M"}``).
    """

    def __init__(self, stop_words: Sequence[str], *, threshold: float | Mapping[str, float] | None = None,
                 pronunciations: Mapping[str, str] | None = None, max_decoders: int | None = None) -> None:
        ps = _import_pocketsphinx()
        if isinstance(stop_words, str):
            stop_words = [stop_words]
        if not stop_words:
            raise ValueError("PocketSphinxSpotter needs at least one stop word")
        self.stop_words = tuple(stop_words)
        self._ps = ps
        extra = {w.casefold(): p.upper().split() for w, p in (pronunciations or {}).items()}
        lexicon = _lexicon(ps.get_model_path(os.path.join("en-us", "cmudict-en-us.dict")))
        entries: dict[str, list[str]] = {}
        self._phrase_to_word: dict[str, str] = {}
        lines = []
        for stop in self.stop_words:
            words = _words(stop)
            if not words:
                raise ValueError(f"stop word {stop!r} has no letters")
            phones = 0
            for w in words:
                if w in extra:
                    entries[w] = [" ".join(extra[w])]
                elif w in lexicon:
                    entries[w] = list(lexicon[w])
                else:
                    raise ValueError(
                        f"stop word {stop!r}: {w!r} is not in PocketSphinx's English dictionary; try another "
                        f"spelling, give its phones with pronunciations={{{w!r}: 'PH OW N Z'}}, or pass a spotter "
                        "of your own")
                phones += len(entries[w][0].split())
            phrase = " ".join(words)
            self._phrase_to_word.setdefault(phrase, stop)
            lines.append(f"{phrase} /{self._threshold_for(stop, phones, threshold):.3e}/")
        self._dict_text = "".join(f"{w} {p}\n" if i == 0 else f"{w}({i + 1}) {p}\n"
                                  for w, prons in entries.items() for i, p in enumerate(prons))
        self._kws_text = "\n".join(lines) + "\n"
        self.thresholds = {line.rsplit(" /", 1)[0]: float(line.rsplit("/", 2)[1]) for line in lines}
        self.max_decoders = max(1, max_decoders if max_decoders is not None else min(4, os.cpu_count() or 1))
        self._slots = threading.BoundedSemaphore(self.max_decoders)
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._closed = False
        try:  # build one now, so a bad pronunciation fails here and not in the server's thread
            first = self._new_decoder()
        except RuntimeError as exc:
            raise ValueError(f"PocketSphinx rejected the stop words {list(self.stop_words)}: {exc}") from exc
        for w, prons in entries.items():  # PocketSphinx drops a word with an unknown phone, with only a log line
            if first.lookup_word(w) is None:
                raise ValueError(f"pronunciation {prons[0]!r} of {w!r} uses a phone the acoustic model lacks "
                                 "(ARPAbet phones without stress digits, e.g. 'K AH M P Y UW T ER')")
        self._idle.append(first)

    @staticmethod
    def _threshold_for(stop: str, phones: int, threshold: float | Mapping[str, float] | None) -> float:
        if isinstance(threshold, Mapping):
            threshold = threshold.get(stop)
        if threshold is None:
            return 10.0 ** (DEFAULT_LOG10_THRESHOLD_PER_PHONE * phones)
        if not (0.0 < float(threshold) and math.isfinite(float(threshold))):
            raise ValueError(f"threshold for {stop!r} must be a positive likelihood ratio such as 1e-40")
        return float(threshold)

    def _new_decoder(self) -> Any:
        with tempfile.TemporaryDirectory(prefix="wsstream-kws-") as tmp:
            dict_path, kws_path = os.path.join(tmp, "stop.dict"), os.path.join(tmp, "stop.kws")
            with open(dict_path, "w", encoding="utf-8") as f:
                f.write(self._dict_text)
            with open(kws_path, "w", encoding="utf-8") as f:
                f.write(self._kws_text)
            return self._ps.Decoder(kws=kws_path, dict=dict_path, loglevel="ERROR")

    @property
    def decoders(self) -> int:
        """Decoders alive in the pool now (idle ones; at most ``max_decoders`` ever exist)."""
        return len(self._idle)

    def __call__(self, audio: tuple[int, np.ndarray]) -> Heard | None:
        """The earliest stop word PocketSphinx spots in ``(rate, samples)``, with where it ended."""
        pcm = self._pcm16(audio)
        if pcm.size < _RATE // 10:
            return None
        with self._slots:
            with self._lock:
                if self._closed:
                    raise RuntimeError("PocketSphinxSpotter is closed")
                decoder = self._idle.pop() if self._idle else None
            if decoder is None:
                decoder = self._new_decoder()
            heard = self._decode(decoder, pcm)  # a decoder that raised is dropped, not reused
            with self._lock:
                if not self._closed:
                    self._idle.append(decoder)
        return heard

    def _decode(self, decoder: Any, pcm: np.ndarray) -> Heard | None:
        # The whole window in one call with full_utt: cepstral mean normalization over the
        # window itself (batch CMN, as the model was trained). Live CMN from the model's
        # generic start takes a second or more to settle, exactly where a stop word at the
        # start of a turn is, and would carry one call's audio into the next.
        # The front end keeps a noise estimate from utterance to utterance; reset it (about
        # 0.1 ms) so a window's answer never depends on which streams this decoder heard.
        decoder.reinit_feat()
        decoder.start_utt()
        decoder.process_raw(pcm.tobytes(), False, True)
        decoder.end_utt()
        if decoder.hyp() is None:
            return None
        # a keyphrase segment's word is the phrase as written in the kws file, space-padded
        found = [(seg.end_frame, " ".join(seg.word.split())) for seg in decoder.seg() or ()]
        found = [(end, phrase) for end, phrase in found if phrase in self._phrase_to_word]
        if not found:
            return None
        end_frame, phrase = min(found)
        end_s = min((end_frame + 1) / _FRAME_RATE, pcm.size / _RATE)
        return Heard(self._phrase_to_word[phrase], end_s)

    @staticmethod
    def _pcm16(audio: tuple[int, np.ndarray]) -> np.ndarray:
        """Mono int16 at 16 kHz with the dither added, from int16 or float audio at any rate."""
        rate, samples = audio
        x = np.asarray(samples)
        if x.ndim == 2 and 1 in x.shape:
            x = x.reshape(-1)
        if x.ndim != 1:
            raise ValueError(f"a spotter takes mono audio, got shape {x.shape}")
        if not 8000 <= int(rate) <= 48000:
            raise ValueError(f"sample rate {rate} outside 8000–48000 Hz")
        if x.dtype == np.int16:
            x = x.astype(np.float32) / 32768.0
        elif np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32, copy=False)
        else:
            raise ValueError(f"samples must be int16 or float, not {x.dtype}")
        if int(rate) != _RATE:
            x = soxr.resample(x, int(rate), _RATE)
        x = x + np.resize(_DITHER, x.size)
        return (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)

    def close(self) -> None:
        """Free the decoders; later calls raise RuntimeError. Safe to call twice."""
        with self._lock:
            self._closed = True
            self._idle.clear()

    def __enter__(self) -> PocketSphinxSpotter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# A worker process's own spotter, built by the pool's initializer (one per process, never in the server).
_worker_spotter: Spotter | None = None


def _start_worker(factory: Callable[[], Spotter]) -> None:
    global _worker_spotter
    _worker_spotter = factory()


def _noop() -> None:
    pass


def _spot_in_worker(audio: tuple[int, np.ndarray]) -> SpotResult:
    assert _worker_spotter is not None, "worker started without its spotter"
    return _worker_spotter(audio)


class ProcessPoolSpotter:
    """A :data:`Spotter` run in worker processes, for engines that hold the GIL while they decode.

    PocketSphinx does (measured: a 2.5 s window holds it 70-200 ms), so from a thread it
    would stall the event loop, and every stream with it, at each spot. Here the server's
    process only sends the window (80 KB at 16 kHz) and waits with the GIL released.

    ``factory`` builds the spotter in each worker (it must be picklable: a class or a
    ``functools.partial``). The workers start on the first call, by ``spawn`` (the server's
    process has inference threads: a fork of it is unsafe), each holding one spotter; a
    worker that dies is replaced on the next call (the call in flight raises).
    """

    def __init__(self, factory: Callable[[], Spotter], processes: int | None = None) -> None:
        self.factory = factory
        self.processes = max(1, processes if processes is not None else min(2, os.cpu_count() or 1))
        self._lock = threading.Lock()
        self._pool: Any = None
        self._closed = False

    def _executor(self) -> Any:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with self._lock:
            if self._closed:
                raise RuntimeError("ProcessPoolSpotter is closed")
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.processes, mp_context=get_context("spawn"),
                                                 initializer=_start_worker, initargs=(self.factory,))
            return self._pool

    def start(self) -> None:
        """Start the workers now (the server does at start-up), so the first spot need not wait for them."""
        pool = self._executor()
        for _ in range(self.processes):
            pool.submit(_noop)

    def __call__(self, audio: tuple[int, np.ndarray]) -> SpotResult:
        from concurrent.futures.process import BrokenProcessPool

        pool = self._executor()
        try:
            return pool.submit(_spot_in_worker, audio).result()
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    self._pool = None  # (the next call starts fresh workers)
            pool.shutdown(wait=True, cancel_futures=True)
            raise

    def close(self) -> None:
        """Stop the workers, after the decode in flight (a fraction of a second). Safe to call twice."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:  # (waiting: a pool left behind half shut fails in the interpreter's exit)
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ProcessPoolSpotter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_spotter(stop_words: Sequence[str], *, threshold: float | Mapping[str, float] | None = None,
                    pronunciations: Mapping[str, str] | None = None,
                    processes: int | None = None) -> ProcessPoolSpotter:
    """What ReplyOnStopWords uses without a spotter of the user's: PocketSphinx in worker processes (its
    options as :class:`PocketSphinxSpotter`'s). The words are checked here, at once: a word PocketSphinx
    cannot spot fails now, not in a worker."""
    options: dict[str, Any] = {"threshold": None if threshold is None else (
        dict(threshold) if isinstance(threshold, Mapping) else threshold),
        "pronunciations": None if pronunciations is None else dict(pronunciations), "max_decoders": 1}
    words = (stop_words,) if isinstance(stop_words, str) else tuple(stop_words)
    PocketSphinxSpotter(words, **options).close()
    return ProcessPoolSpotter(functools.partial(PocketSphinxSpotter, words, **options), processes)
