"""Make the backchannel set: short acknowledgements a listener says over a reply, in several voices.

    uv run python tests/data/backchannels/make_backchannels.py   (needs espeak-ng; outputs are committed)

16 kHz mono FLAC, each word with 0.3 s of silence before and after, and
manifest.json: file, voice, text, and speech_s (the word's own length: the
file's length less the padding). Used by tests/test_turn_taking_socket.py.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

HERE = Path(__file__).resolve().parent
RATE = 16000
PAD_S = 0.3
VOICES = [("en-us", 175), ("en", 170), ("en+f3", 180), ("en-us+m3", 165)]
WORDS = ["yeah", "okay", "uh-huh", "right", "sure", "yes"]


def speak(text: str, voice: str, speed: int) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", tmp.name, text], check=True)
        audio, sr = sf.read(tmp.name, dtype="float32")
    audio = soxr.resample(audio, sr, RATE) if sr != RATE else audio
    loud = np.flatnonzero(np.abs(audio) > 0.01)  # espeak's own leading and trailing silence off
    return audio[loud[0]:loud[-1] + 1] * 0.5 if loud.size else audio


def main() -> None:
    files = []
    pad = np.zeros(int(PAD_S * RATE), np.float32)
    for voice, speed in VOICES:
        for i, word in enumerate(WORDS):
            audio = speak(word, voice, speed)
            name = f"{voice.replace('+', '_').replace('-', '_')}_{i:02d}.flac"
            sf.write(HERE / name, np.concatenate([pad, audio, pad]), RATE, subtype="PCM_16")
            files.append({"file": name, "voice": voice, "text": word, "speech_s": round(audio.size / RATE, 3)})
    (HERE / "manifest.json").write_text(json.dumps({"sample_rate": RATE, "pad_s": PAD_S, "files": files},
                                                   indent=1) + "\n")


if __name__ == "__main__":
    main()
