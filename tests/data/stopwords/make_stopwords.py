"""Synthesize the stop-word test set with espeak-ng (run once; the FLAC files and manifest are committed).

    apt-get install -y espeak-ng
    uv run python tests/data/stopwords/make_stopwords.py

Each voice (espeak-ng voice + speed) says the same sentences: some that open with
the stop word "computer", some with it mid-sentence, and some without it, among
them near-misses ("commuter", "compute", "come here") that a spotter must reject.
Output is 16 kHz mono 16-bit FLAC with 0.3 s of silence each side, so what a
spotter hears looks like a turn after the VAD has cut it out.

espeak-ng's library (libespeak-ng, which the espeak-ng package installs) is
driven through ctypes rather than the command line so that its phoneme events
come with the audio: they give the sample where each phoneme starts, and so where
the stop word starts and ends in the file (``word_start_s``/``word_end_s``), exact
to espeak-ng's own timing rather than guessed by aligning afterwards.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import re
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

HERE = Path(__file__).resolve().parent
RATE = 16000
PAD_S = 0.3
STOP_WORD = "computer"

# (espeak-ng voice, words per minute): accents, pitch/formant variants and speeds differ
VOICES = [
    ("en-us", 160),
    ("en", 175),  # British English
    ("en+f3", 150),
    ("en-us+f2", 190),
    ("en+m3", 140),
]

STARTS = [
    "computer, what time is it",
    "computer, turn on the lights",
    "computer, play some music",
    "computer, what is the weather like tomorrow",
    "computer, set a timer for ten minutes",
    "computer, call my mother",
    "computer stop",
    "computer, how far is the moon",
]
MIDDLES = [
    "okay so computer, what is on my calendar",
    "I was wondering, computer, can you help me",
    "tell me computer, what day it is",
    "well computer, read me the news",
]
WITHOUT = [
    "the commuter train was late again",
    "please compute the total for me",
    "come here please",
    "the committee will meet at noon",
    "what time is it",
    "turn on the lights in the kitchen",
    "I would like a cup of coffee",
    "the weather is nice today",
    "my cousin bought a new car",
    "we should go to the park tomorrow",
]

# speak_lib.h, as the library's ABI has it since espeak 1.x
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 1
EVENT_LIST_TERMINATED, EVENT_PHONEME = 0, 7
POS_CHARACTER = 1
CHARS_UTF8 = 1
PARAM_RATE = 1


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class Espeak:
    """One synthesis at a time: int16 audio plus (text position, first sample) of every phoneme."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        self.lib = ctypes.CDLL(name)
        self.rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, None, INITIALIZE_PHONEME_EVENTS)
        if self.rate <= 0:
            raise SystemExit("espeak-ng failed to initialise: apt-get install -y espeak-ng")
        self._chunks: list[bytes] = []
        self._phonemes: list[tuple[int, int]] = []
        self._callback = _Callback(self._on_audio)  # kept referenced: the library calls it later
        self.lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav, count, events) -> int:
        if count > 0:
            self._chunks.append(ctypes.string_at(wav, count * 2))
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            if events[i].type == EVENT_PHONEME:
                self._phonemes.append((events[i].text_position, events[i].sample))
            i += 1
        return 0

    def say(self, text: str, voice: str, speed: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise SystemExit(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(PARAM_RATE, speed, 0)
        self._chunks, self._phonemes = [], []
        data = text.encode()
        self.lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        return np.frombuffer(b"".join(self._chunks), dtype=np.int16), self._phonemes


def word_samples(text: str, phonemes: list[tuple[int, int]], total: int) -> tuple[int, int]:
    """First sample of the stop word's first phoneme, and the first sample after its last one."""
    m = re.search(rf"\b{STOP_WORD}\b", text)
    assert m is not None
    pos = m.start() + 1  # espeak-ng counts characters from 1
    mine = [i for i, (p, _) in enumerate(phonemes) if p == pos]
    start = phonemes[mine[0]][1]
    end = phonemes[mine[-1] + 1][1] if mine[-1] + 1 < len(phonemes) else total
    return start, end


def main() -> None:
    espeak = Espeak()
    for old in HERE.glob("*.flac"):
        old.unlink()
    pad = int(PAD_S * RATE)
    entries = []
    sentences = [(t, "start") for t in STARTS] + [(t, "middle") for t in MIDDLES] + [(t, "none") for t in WITHOUT]
    for voice, speed in VOICES:
        tag = re.sub(r"[^a-z0-9]+", "_", voice)
        for i, (text, where) in enumerate(sentences):
            raw, phonemes = espeak.say(text, voice, speed)
            loud = np.flatnonzero(np.abs(raw) > 300)
            first, last = int(loud[0]), int(loud[-1]) + 1
            speech = soxr.resample(raw[first:last].astype(np.float32) / 32768, espeak.rate, RATE)
            audio = np.concatenate([np.zeros(pad, np.float32), speech, np.zeros(pad, np.float32)])
            name = f"{tag}_{i:02d}.flac"
            sf.write(HERE / name, np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16), RATE, subtype="PCM_16")
            entry = {"file": name, "voice": voice, "speed": speed, "text": text, "has_stop_word": where != "none",
                     "position": where, "duration_s": round(audio.size / RATE, 3)}
            if where != "none":
                start, end = word_samples(text, phonemes, raw.size)
                lo, hi = (min(max(n, first), last) - first for n in (start, end))
                entry["word_start_s"] = round(PAD_S + lo / espeak.rate, 3)
                entry["word_end_s"] = round(PAD_S + hi / espeak.rate, 3)
            entries.append(entry)
    manifest = {"sample_rate": RATE, "stop_word": STOP_WORD, "pad_s": PAD_S,
                "note": "word_start_s/word_end_s: where the stop word's phonemes start and end, "
                        "from espeak-ng's events",
                "files": entries}
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{len(entries)} files, {sum(p.stat().st_size for p in HERE.glob('*.flac')) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
