"""G.711 μ-law and A-law against an independent oracle: Python's ``audioop``.

``audioop`` is in the standard library up to Python 3.12; from 3.13 on the
``audioop-lts`` package (a dev dependency, installed only there) provides it.
Every one of the 256 codes is decoded and re-encoded, and random plus edge-case
int16 samples are encoded, through our tables and through the oracle.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from wsstream.codecs import ALAW_DECODE, ALAW_ENCODE, ULAW_DECODE, ULAW_ENCODE, decode, encode

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # stdlib before 3.13, the audioop-lts dev dependency from 3.13 on

ALL_CODES = bytes(range(256))
LAWS = {
    "mulaw": (audioop.ulaw2lin, audioop.lin2ulaw),
    "alaw": (audioop.alaw2lin, audioop.lin2alaw),
}


def oracle_decode(data: bytes, law: str) -> np.ndarray:
    return np.frombuffer(LAWS[law][0](data, 2), dtype="<i2")


def oracle_encode(samples: np.ndarray, law: str) -> bytes:
    return LAWS[law][1](samples.astype("<i2").tobytes(), 2)


@pytest.mark.parametrize("law", ["mulaw", "alaw"])
def test_every_code_decodes_like_the_oracle(law: str) -> None:
    ours = decode(ALL_CODES, law)
    assert ours.dtype == np.int16 and ours.size == 256
    np.testing.assert_array_equal(ours, oracle_decode(ALL_CODES, law))


@pytest.mark.parametrize("law", ["mulaw", "alaw"])
def test_every_code_round_trips_like_the_oracle(law: str) -> None:
    """code -> linear -> code: ours and the oracle agree on every code, and codes are stable."""
    linear = oracle_decode(ALL_CODES, law)
    ours = encode(linear.astype(np.int16), law)
    assert ours == oracle_encode(linear, law)
    if law == "alaw":
        assert ours == ALL_CODES  # A-law has no duplicate zero: every code is its own image
    else:
        # μ-law has two zeros (0x7F is -0 and 0xFF is +0); every other code maps to itself.
        expected = bytearray(ALL_CODES)
        expected[0x7F] = 0xFF
        assert ours == bytes(expected)


@pytest.mark.parametrize("law", ["mulaw", "alaw"])
def test_every_int16_value_encodes_like_the_oracle(law: str) -> None:
    """All 65536 sample values (the whole encode table), not a sample of them."""
    samples = np.arange(-32768, 32768, dtype=np.int16)
    assert encode(samples, law) == oracle_encode(samples, law)


@pytest.mark.parametrize("law", ["mulaw", "alaw"])
def test_random_int16_against_the_oracle(law: str) -> None:
    rng = np.random.default_rng(711)
    samples = rng.integers(-32768, 32768, size=200_000, dtype=np.int64).astype(np.int16)
    # speech-like levels too, where most real samples live
    quiet = (rng.standard_normal(50_000) * 1500).clip(-32768, 32767).astype(np.int16)
    edges = np.array([-32768, -32767, -32635, -32124, -8159, -1, 0, 1, 31, 32, 33, 8158, 8159,
                      32124, 32635, 32767], dtype=np.int16)
    for batch in (samples, quiet, edges):
        coded = encode(batch, law)
        assert coded == oracle_encode(batch, law)
        np.testing.assert_array_equal(decode(coded, law), oracle_decode(coded, law))


def test_tables_are_the_right_shape() -> None:
    for table in (ULAW_ENCODE, ALAW_ENCODE):
        assert table.shape == (65536,) and table.dtype == np.uint8
    for table in (ULAW_DECODE, ALAW_DECODE):
        assert table.shape == (256,) and table.dtype == np.int16
    # G.711 fixed points everyone relies on: μ-law silence is 0xFF, A-law silence 0xD5
    assert encode(np.zeros(1, np.int16), "mulaw") == b"\xff"
    assert encode(np.zeros(1, np.int16), "alaw") == b"\xd5"
    assert int(ULAW_DECODE[0x00]) == -32124 and int(ULAW_DECODE[0x80]) == 32124
    assert int(ALAW_DECODE[0x2A]) == -32256 and int(ALAW_DECODE[0xAA]) == 32256
