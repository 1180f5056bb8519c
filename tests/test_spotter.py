"""The stop-word spotter interface and the PocketSphinx default, on the espeak-ng set in tests/data/stopwords."""

from __future__ import annotations

import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from wsstream.spotter import Heard, PocketSphinxSpotter, match_stop_words, pocketsphinx_available, resolve

DATA = Path(__file__).resolve().parent / "data" / "stopwords"
NEAR_MISSES = {"the commuter train was late again", "please compute the total for me", "come here please",
               "the committee will meet at noon"}

needs_pocketsphinx = pytest.mark.skipif(not pocketsphinx_available(), reason="pocketsphinx not installed")


@pytest.mark.parametrize(("text", "stop_words", "expected"), [
    ("Computer, what time is it?", ["computer"], "computer"),
    ("okay so COMPUTER... lights", ["computer"], "computer"),
    ("my computers are slow", ["computer"], None),
    ("a supercomputer", ["computer"], None),
    ("hey   assistant!", ["hey assistant"], "hey assistant"),
    ("hey, assistant", ["Hey Assistant"], "Hey Assistant"),
    ("they assist ants", ["hey assistant"], None),
    ("assistant hey", ["hey assistant"], None),
    ("what's up computer", ["what"], None),
    ("stop now, computer", ["computer", "stop"], "computer"),  # configuration order, not the text's
    ("", ["computer"], None),
    ("computer", [], None),
])
def test_match_stop_words(text: str, stop_words: list[str], expected: str | None) -> None:
    assert match_stop_words(text, stop_words) == expected


def test_resolve() -> None:
    words = ["computer", "jarvis"]
    assert resolve(None, words) is None
    assert resolve(False, words) is None
    assert resolve(np.bool_(False), words) is None
    assert resolve(True, words) == Heard("computer")
    assert resolve(np.bool_(True), words) == Heard("computer")
    assert resolve("ok Jarvis, lights", words) == Heard("jarvis")
    assert resolve("nothing here", words) is None
    heard = Heard("jarvis", 1.25)
    assert resolve(heard, words) is heard
    with pytest.raises(ValueError):
        resolve(True, [])
    with pytest.raises(TypeError):
        resolve(0.9, words)  # type: ignore[arg-type]


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pocketsphinx", None)
    with pytest.raises(ImportError, match=r"wsstream\[stopwords\]"):
        PocketSphinxSpotter(["computer"])


def _load(rate: int = 16000) -> list[tuple[dict, np.ndarray]]:
    manifest = json.loads((DATA / "manifest.json").read_text())
    out = []
    for entry in manifest["files"]:
        audio, sr = sf.read(DATA / entry["file"], dtype="int16")
        out.append((entry, audio if sr == rate else soxr.resample(audio, sr, rate)))
    return out


@pytest.fixture(scope="module")
def items() -> list[tuple[dict, np.ndarray]]:
    return _load()


@pytest.fixture(scope="module")
def spotter() -> PocketSphinxSpotter:
    if not pocketsphinx_available():
        pytest.skip("pocketsphinx not installed")
    with PocketSphinxSpotter(["computer"]) as s:
        yield s


@pytest.fixture(scope="module")
def heard(spotter: PocketSphinxSpotter, items: list) -> dict[str, Heard | None]:
    """The default spotter on each whole utterance, serially."""
    return {e["file"]: spotter((16000, a)) for e, a in items}


def test_manifest_describes_the_set(items: list) -> None:
    assert len({e["voice"] for e, _ in items}) >= 4
    assert sum(e["has_stop_word"] for e, _ in items) == 60
    for entry, audio in items:
        assert abs(audio.size / 16000 - entry["duration_s"]) < 0.002
        if entry["has_stop_word"]:
            assert 0.3 <= entry["word_start_s"] < entry["word_end_s"] < entry["duration_s"]


@needs_pocketsphinx
def test_hit_and_false_activation_rates(heard: dict, items: list) -> None:
    # Synthetic speech and one-phoneme near-misses ("compute", "commuter") are hard for
    # PocketSphinx's 2015 model: the benchmark shows the near-misses are where it fails.
    pos = [heard[e["file"]] is not None for e, _ in items if e["has_stop_word"]]
    neg = [heard[e["file"]] is not None for e, _ in items if not e["has_stop_word"]]
    ordinary = [heard[e["file"]] is not None for e, _ in items
                if not e["has_stop_word"] and e["text"] not in NEAR_MISSES]
    assert np.mean(pos) >= 0.85
    assert np.mean(neg) <= 0.15
    assert sum(ordinary) <= 1
    assert all(h is None or h.word == "computer" for h in heard.values())


@needs_pocketsphinx
def test_end_s_is_where_the_word_ends(heard: dict, items: list) -> None:
    checked = 0
    for entry, _ in items:
        h = heard[entry["file"]]
        if h is None or not entry["has_stop_word"]:
            continue
        assert h.end_s is not None
        assert entry["word_start_s"] < h.end_s <= entry["duration_s"]
        assert abs(h.end_s - entry["word_end_s"]) < 0.25
        checked += 1
    assert checked >= 50


@needs_pocketsphinx
def test_concurrent_calls_match_serial_ones(spotter: PocketSphinxSpotter, heard: dict, items: list) -> None:
    # Every file twice, in an order that gives each decoder a different history.
    work = [(e["file"], a) for e, a in items[::3]] * 2
    pool = PocketSphinxSpotter(["computer"], max_decoders=3)
    live = 0
    peak = 0
    lock = threading.Lock()

    def call(item: tuple[str, np.ndarray]) -> tuple[str, Heard | None]:
        nonlocal live, peak
        with lock:
            live += 1
            peak = max(peak, live)
        try:
            return item[0], pool((16000, item[1]))
        finally:
            with lock:
                live -= 1

    with ThreadPoolExecutor(max_workers=8) as ex:
        results = list(ex.map(call, work))
    assert peak > 3  # more callers than decoders, so some waited
    assert pool.decoders <= 3
    assert all(got == heard[name] for name, got in results)
    pool.close()
    with pytest.raises(RuntimeError):
        pool((16000, items[0][1]))


@needs_pocketsphinx
def test_unknown_word_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="zqxjvorp") as info:
        PocketSphinxSpotter(["hey zqxjvorp"])
    assert "spotter of your own" in str(info.value)
    s = PocketSphinxSpotter(["zqxjvorp"], pronunciations={"zqxjvorp": "Z IH K S V AO R P"})
    assert s.thresholds == {"zqxjvorp": pytest.approx(10.0 ** (-3.75 * 8))}
    with pytest.raises(ValueError, match="ZZ"):
        PocketSphinxSpotter(["zqxjvorp"], pronunciations={"zqxjvorp": "ZZ TOP"})


@needs_pocketsphinx
def test_threshold_per_word_and_validation() -> None:
    s = PocketSphinxSpotter(["computer", "hey assistant"], threshold={"computer": 1e-20})
    assert s.thresholds["computer"] == pytest.approx(1e-20)
    assert s.thresholds["hey assistant"] == pytest.approx(10.0 ** (-3.75 * 10))  # HH EY + AH S IH S T AH N T
    with pytest.raises(ValueError):
        PocketSphinxSpotter(["computer"], threshold=0.0)


@needs_pocketsphinx
def test_telephone_rate_input(spotter: PocketSphinxSpotter) -> None:
    chosen = [(e, a) for e, a in _load(8000) if e["voice"] == "en-us"]
    pos = [spotter((8000, a)) is not None for e, a in chosen if e["has_stop_word"]]
    ordinary = [spotter((8000, a)) is not None for e, a in chosen
                if not e["has_stop_word"] and e["text"] not in NEAR_MISSES]
    assert np.mean(pos) >= 0.9
    assert not any(ordinary)


@needs_pocketsphinx
def test_int16_and_float32_agree(spotter: PocketSphinxSpotter, items: list) -> None:
    for entry, audio in items[:3] + items[12:15]:
        as_float = audio.astype(np.float32) / 32768.0
        assert spotter((16000, as_float)) == spotter((16000, audio))
        assert spotter((48000, soxr.resample(as_float, 16000, 48000))) is not None or not entry["has_stop_word"]


@needs_pocketsphinx
def test_silence_short_and_bad_input(spotter: PocketSphinxSpotter) -> None:
    assert spotter((16000, np.zeros(40000, np.int16))) is None
    assert spotter((16000, np.zeros(100, np.float32))) is None
    with pytest.raises(ValueError):
        spotter((16000, np.zeros((2, 1000), np.float32)))
    with pytest.raises(ValueError):
        spotter((4000, np.zeros(1000, np.float32)))


@needs_pocketsphinx
def test_the_default_spotter_decodes_in_worker_processes() -> None:
    """PocketSphinx holds the GIL while it decodes (70-200 ms per 2.5 s window): from a thread it would
    stall the event loop, and every stream with it. The default spotter decodes in worker processes, so
    the server's process spends next to no CPU (hence no GIL) per spot. (CPU time, not wall-clock stalls:
    on a saturated machine the scheduler's own gaps would drown the difference.)"""
    import time

    from wsstream.spotter import ProcessPoolSpotter, default_spotter

    entries = json.loads((DATA / "manifest.json").read_text())["files"]
    with_word = next(f for f in entries if f["has_stop_word"] and f["position"] == "start")
    without = next(f for f in entries if f["position"] == "none" and f["text"] not in NEAR_MISSES)

    def window(entry: dict) -> tuple[int, np.ndarray]:
        audio, rate = sf.read(DATA / entry["file"], dtype="float32")
        return rate, np.tile(audio, 2)[:int(2.5 * rate)]

    def cpu_per_call(spotter: object, audio: tuple[int, np.ndarray], n: int) -> tuple[list[object], float]:
        c0 = time.process_time()  # (all threads of this process)
        with ThreadPoolExecutor(2) as threads:
            results = list(threads.map(spotter, [audio] * n))
        return results, (time.process_time() - c0) / n

    spotter = default_spotter(["computer"])
    assert isinstance(spotter, ProcessPoolSpotter)
    try:
        spotter.start()
        (heard,), _ = cpu_per_call(spotter, window(with_word), 1)  # (the workers are up after this)
        assert heard is not None and heard.word == "computer"
        results, pooled = cpu_per_call(spotter, window(with_word), 8)
        assert all(r == heard for r in results)
        assert cpu_per_call(spotter, window(without), 2)[0] == [None, None]
        with PocketSphinxSpotter(["computer"]) as in_thread:
            assert cpu_per_call(in_thread, window(with_word), 1)[0] == [heard]  # the same answer
            _, threaded = cpu_per_call(in_thread, window(with_word), 8)
    finally:
        spotter.close()
    assert pooled < threaded / 10, (pooled, threaded)
    with pytest.raises(RuntimeError, match="closed"):
        spotter(window(with_word))


@needs_pocketsphinx
def test_default_spotter_options_are_checked_at_once_and_reach_the_workers() -> None:
    from wsstream.spotter import default_spotter

    with pytest.raises(ValueError, match="not in PocketSphinx's English dictionary"):
        default_spotter(["xqzzyv"])  # (here, not later in a worker)
    spotter = default_spotter("computer", threshold=1e-24, processes=1)
    built = spotter.factory()  # what each worker builds
    assert built.stop_words == ("computer",) and built.thresholds == {"computer": 1e-24}
    assert built.max_decoders == 1 and spotter.processes == 1
    built.close()
    spotter.close()
