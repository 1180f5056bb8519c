"""Is what the microphone hears our own reply coming back? A reference-based echo gate.

When the client has no echo canceller (a speakerphone, a browser with its audio
processing off), the reply we send leaks back into the microphone and the VAD
calls it speech. The server knows exactly what it played and when, so instead of
trusting the VAD alone, barge-in asks this gate whether the speech since the
onset is explained by that echo.

Sans-I/O and one timeline: both the microphone and the reference (the reply as it
plays) are positioned in samples of the input, at the input rate. Feeding it only
copies samples into two bounded rings; all analysis happens when ``echo_only`` is
asked, over a couple of seconds of history, so a stream that never barges in pays
for buffering alone.

The method, per question (numpy, vectorised over frames and bins):

1. Frame microphone and reference (32 ms Hann frames, 16 ms hop, on one absolute
   grid) and take their spectra; above 8 kHz nothing is used, so any input rate
   works without a resampler.
2. The echo delay: the lag (0..max_delay, in hops) whose reference band-energy
   envelope best correlates with the microphone's, then refined to the sample by
   a phase-transform cross-correlation (GCC-PHAT) of the frames at that lag. Both
   survive band-limiting, μ-law and attenuation, which change levels, not timing.
3. The echo path: one complex gain per frequency bin, fitted by least squares over
   all frames of the span (the user's speech, uncorrelated with the reference, does
   not bias it), and subtracted: what is left is the room plus any talker.
4. What "left over" may hold without a talker: the room's noise per bin (a low
   percentile of the residual over the span), a leak proportional to the echo (the
   part of a real echo path a per-bin gain cannot model; measured on the frames
   before the onset, never below ``leak_db``), and quantisation noise (μ-law).
5. A frame is someone talking when its residual is, averaged over bins, well above
   that; the stretch is echo only when fewer than ``talk_frames`` frames are.

Limits (measured by tests/test_echogate.py and benchmarks/echo_gate.py): a talker
is seen down to about ``leak_db`` below the echo per bin; where the echo path is not
a delay and a filter (a reverberant room, a distorting loudspeaker) the leak grows,
and so the softest talker that still counts grows with it.
"""

from __future__ import annotations

from collections import deque

import numpy as np

_FLOOR = 1e-12  # power floor (float scale, per bin): far under any int16 signal
_NOISE_QUANTILE = 0.2  # the residual's low percentile per bin taken as the room's noise ...
_NOISE_SCALE = 1.0 / 0.223  # ... scaled to the mean (an exponential's 20th percentile is 0.223 of its mean)
_DELAY_BANDS_HZ = (250.0, 500.0, 800.0, 1200.0, 1800.0, 2600.0, 3400.0)  # where any phone passes the echo
_DELAY_TOP_HZ = 4000.0  # the delay is looked for in the band every phone passes
_SURE_PEAK = 0.15  # a delay is remembered when about this fraction of bins agree on it (no echo: < 0.05)


class _Ring:
    """The last ``capacity`` samples of one absolute timeline, int16; gaps read as zeros."""

    __slots__ = ("buf", "capacity", "hi", "lo")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buf = np.zeros(capacity, dtype=np.int16)
        self.lo = 0  # first position held
        self.hi = 0  # one past the last position written

    def write(self, samples: np.ndarray, start: int) -> None:
        n = samples.size
        end = start + n
        cap = self.capacity
        if end <= self.hi - cap:
            return  # wholly older than what is kept
        if start > self.hi:  # a jump forward: the skipped stretch is silence
            if start - self.hi >= cap:
                self.lo = self.hi = start
            else:
                self._put(np.zeros(start - self.hi, dtype=np.int16), self.hi)
                self.hi = start
        if n > cap:
            samples, start = samples[n - cap:], end - cap
        self._put(samples, start)
        self.hi = max(self.hi, end)
        self.lo = max(self.lo, self.hi - cap)
        if start < self.lo:
            self.lo = max(start, self.hi - cap)

    def _put(self, samples: np.ndarray, start: int) -> None:
        i = start % self.capacity
        n = samples.size
        first = min(n, self.capacity - i)
        self.buf[i:i + first] = samples[:first]
        if first < n:
            self.buf[:n - first] = samples[first:]

    def read(self, start: int, end: int) -> np.ndarray:
        """Samples [start, end) as float32 in -1..1; what is not held is zero."""
        out = np.zeros(end - start, dtype=np.float32)
        a, b = max(start, self.lo), min(end, self.hi)
        if a < b:
            i = a % self.capacity
            n = b - a
            first = min(n, self.capacity - i)
            out[a - start:a - start + first] = self.buf[i:i + first]
            if first < n:
                out[a - start + first:b - start] = self.buf[:n - first]
            out *= np.float32(1.0 / 32768.0)
        return out


def _as_int16(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.dtype == np.int16:
        return samples.reshape(-1)
    if np.issubdtype(samples.dtype, np.floating):
        return (np.clip(samples.reshape(-1), -1.0, 1.0) * 32767.0).astype(np.int16)
    raise TypeError(f"audio must be int16 or float, got {samples.dtype}")


class EchoGate:
    """Is what the microphone hears our own reply coming back? One per stream."""

    def __init__(self, rate: int, *, max_delay_ms: float = 400.0, history_s: float = 3.0,
                 context_ms: float = 1000.0, max_ahead_s: float = 2.0, frame_ms: float = 32.0,
                 leak_db: float = -25.0, max_leak_db: float = -6.0, quantisation_db: float = -28.0,
                 talk_ratio_db: float = 5.0, talk_frames: int = 3, taps: int = 1,
                 bin_cap_db: float = 10.0, top_hz: float = 8000.0) -> None:
        """``max_delay_ms``: the longest echo delay looked for. ``history_s``: microphone kept (the
        reference keeps that plus the delay plus ``max_ahead_s`` of not-yet-played audio).
        ``context_ms``: audio before the onset that the echo path is learned from. ``leak_db``: the
        least echo left after subtraction that is still taken as echo (per bin); ``max_leak_db`` caps
        what the context may raise it to. ``quantisation_db``: noise relative to the echo's power
        spread over all bins (μ-law's is about -38 dB). ``talk_ratio_db``: how far a frame's residual
        must exceed all that to be someone talking; ``talk_frames``: how many such frames make a
        talker."""
        if rate < 4000:
            raise ValueError(f"rate must be at least 4000 Hz, got {rate}")
        if not 0 < max_delay_ms <= 2000:
            raise ValueError("max_delay_ms must be in (0, 2000]")
        self.rate = rate
        self.max_delay = int(round(max_delay_ms * rate / 1000))
        frame = int(round(frame_ms * rate / 1000)) // 2 * 2
        self._frame = frame
        self._hop = frame // 2
        # periodic Hann (flat sum at half overlap); float64, which numpy FFTs 4x faster than float32
        self._window = np.hanning(frame + 1)[:frame]
        self._lags = -(-self.max_delay // self._hop)  # hops of delay searched
        self._context = int(round(context_ms * rate / 1000))
        freqs = np.fft.rfftfreq(frame, 1.0 / rate)
        self._bins = int(np.searchsorted(freqs, min(top_hz, rate / 2), side="right"))
        self._delay_bins = int(np.searchsorted(freqs, min(_DELAY_TOP_HZ, rate / 2), side="right"))
        edges = [e for e in _DELAY_BANDS_HZ if e < rate / 2]
        bands = np.zeros((self._bins, max(len(edges) - 1, 1)), dtype=np.float32)
        for b in range(len(edges) - 1):
            bands[(freqs[:self._bins] >= edges[b]) & (freqs[:self._bins] < edges[b + 1]), b] = 1.0
        self._bands = bands
        self._leak = 10.0 ** (leak_db / 10)
        self._max_leak = 10.0 ** (max_leak_db / 10)
        self._quant = 10.0 ** (quantisation_db / 10) / self._bins
        self._talk_ratio = 10.0 ** (talk_ratio_db / 10)
        self._talk_frames = talk_frames
        self._taps = taps
        self._bin_cap = 10.0 ** (bin_cap_db / 10)
        history = int(history_s * rate)
        self._mic = _Ring(history)
        self._ref = _Ring(history + self.max_delay + int(max_ahead_s * rate))
        self._played: deque[list[int]] = deque()  # [start, end) stretches of reference, merged when they touch
        self._known: tuple[int, float] | None = None  # (delay, its GCC peak) when last searched
        self.delay: int | None = None  # the echo delay (samples) found by the last question, for diagnostics

    # ---- feeding: copies only --------------------------------------------------------------

    def reference(self, samples: np.ndarray, start: int) -> None:
        """Reply audio as it is played: int16 or float32 mono at ``rate``, whose first sample plays at
        input position ``start`` (positions may jump forward; played stretches never overlap)."""
        pcm = _as_int16(samples)
        if pcm.size == 0:
            return
        self._ref.write(pcm, start)
        end = start + pcm.size
        played = self._played
        if played and played[-1][1] >= start:
            played[-1][1] = max(played[-1][1], end)
        else:
            played.append([start, end])
        while played and played[0][1] <= self._ref.lo:
            played.popleft()

    def microphone(self, samples: np.ndarray, start: int) -> None:
        """Input audio at ``rate`` from input position ``start`` (contiguous with the last call)."""
        pcm = _as_int16(samples)
        if pcm.size:
            self._mic.write(pcm, start)

    @property
    def active(self) -> bool:
        """Any reference audio within max_delay of the latest input: its echo may still be coming."""
        now = self._mic.hi
        return any(s < now and e > now - self.max_delay for s, e in self._played)

    def _playing(self, start: int, end: int) -> bool:
        return any(s < end and e > start for s, e in self._played)

    # ---- the question ----------------------------------------------------------------------

    def echo_only(self, start: int, end: int) -> bool:
        """True when the input between positions ``start`` and ``end`` (already given to ``microphone``)
        is explained by the echo of the reference alone (no talker of its own); False when someone is
        talking over it, or there was no reference playing then."""
        verdict = self.analyse(start, end)
        return verdict is not None and verdict.talk_frames < self._talk_frames

    def analyse(self, start: int, end: int) -> _Verdict | None:
        """The evidence behind ``echo_only``: None when there is nothing to judge (no reference playing
        then, or less than a frame of input held)."""
        hop, frame = self._hop, self._frame
        end = min(end, self._mic.hi)
        start = max(start, self._mic.lo)
        if end - start < frame or not self._playing(start - self.max_delay, end):
            return None
        first = -(-max(start - self._context, self._mic.lo) // hop)  # frame indices on the absolute grid
        last = (end - frame) // hop
        n = last - first + 1
        if n < 1:
            return None
        origin = first * hop
        mic = self._spectra(self._mic.read(origin, last * hop + frame), n)
        # The echo delay: the last one found while it still fits (a cheap check), else a full search.
        taps = self._taps
        ref = None
        known = self._known
        if known is not None:
            ref = self._ref_frames(origin, last, known[0])
            peak, shift = self._fit(mic, ref[taps:taps + n])
            if abs(shift) > 2 or peak < 0.5 * known[1]:
                ref = None
        if ref is None:
            lags = self._lags
            ref_wide = self._spectra(self._ref.read(origin - lags * hop, last * hop + frame), n + lags)
            delay, peak = self._delay(mic, ref_wide)
            self._known = (delay, peak) if peak >= _SURE_PEAK else None  # (kept only when the echo was clear)
            ref = self._ref_frames(origin, last, delay)
        else:
            delay = self._known[0]
        self.delay = delay
        # The echo path: per bin, a few complex taps on the reference frames around the delay (the
        # frame before and after absorb a phone filter's or a room's smearing), fitted by least squares.
        width = 2 * taps + 1
        x = [ref[t:t + n] for t in range(width)]  # tap t: the reference (taps - t) hops later than the delay
        xc = [v.conj() for v in x]
        gram = np.empty((self._bins, width, width), dtype=ref.dtype)
        for t in range(width):
            for u in range(t, width):
                gram[:, t, u] = (xc[t] * x[u]).sum(axis=0)
                gram[:, u, t] = gram[:, t, u].conj()
        rhs = np.stack([(v * mic).sum(axis=0) for v in xc], axis=1)
        ridge = 1e-6 * np.trace(gram, axis1=1, axis2=2).real / width + _FLOOR
        path = np.linalg.solve(gram + ridge[:, None, None] * np.eye(width, dtype=gram.dtype), rhs[..., None])[..., 0]
        echo = x[0] * path[:, 0]
        for t in range(1, width):
            echo += x[t] * path[:, t]
        residual = mic - echo
        res_power = residual.real ** 2 + residual.imag ** 2
        echo_power = echo.real ** 2 + echo.imag ** 2
        low = min(int(n * _NOISE_QUANTILE), n - 1)
        noise = np.partition(res_power, low, axis=0)[low] * _NOISE_SCALE + _FLOOR
        echo_total = echo_power.sum(axis=1)
        tested = (np.arange(first, last + 1) * hop + frame // 2) >= start
        leak = self._learned_leak(res_power, echo_power, noise, ~tested)
        expected = noise + leak * echo_power + (self._quant * echo_total)[:, None]
        per_bin = np.minimum(res_power[tested] / expected[tested], self._bin_cap)
        self._debug = per_bin
        ratio = per_bin.mean(axis=1)
        talking = int((ratio > self._talk_ratio).sum())
        return _Verdict(talk_frames=talking, frames=int(tested.sum()), delay=delay, leak=leak,
                        ratio=ratio)

    def _spectra(self, samples: np.ndarray, n: int) -> np.ndarray:
        frames = np.lib.stride_tricks.sliding_window_view(samples, self._frame)[::self._hop][:n]
        return np.fft.rfft(frames * self._window, axis=1)[:, :self._bins]

    def _ref_frames(self, origin: int, last: int, delay: int) -> np.ndarray:
        """Reference spectra on the microphone's frames, ``delay`` earlier, ``taps`` extra frames each side."""
        hop, pad = self._hop, self._taps * self._hop
        n = (last * hop - origin) // hop + 1 + 2 * self._taps
        return self._spectra(self._ref.read(origin - delay - pad, last * hop + self._frame - delay + pad), n)

    def _weighted_cross(self, cross: np.ndarray, pm: np.ndarray, pr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """GCC with coherence weights (SCOT): [..., bins] cross-spectra to (peak value, shift in samples)
        within a hop either way; a band the phone cuts off is incoherent and adds no noise."""
        hop = self._hop
        weighted = cross / (np.sqrt(pm * pr) + _FLOOR)
        shifts = np.r_[0:hop + 1, -hop:0]
        xc = np.fft.irfft(weighted, self._frame, axis=-1)[..., shifts % self._frame]  # (zero-padded: 1-sample steps)
        k = np.argmax(xc, axis=-1)
        peak = np.take_along_axis(xc, k[..., None], axis=-1)[..., 0] * (self._frame / (2 * (self._delay_bins - 1)))
        return peak, shifts[k]  # (peak: about the fraction of coherent bins, whatever the rate)

    def _fit(self, mic: np.ndarray, ref: np.ndarray) -> tuple[float, int]:
        """How well a known delay still fits: its GCC peak and where (in samples) the peak now lies."""
        kd = self._delay_bins
        mic, ref = mic[:, :kd], ref[:, :kd]
        cross = (mic * ref.conj()).sum(axis=0)
        pm = (mic.real ** 2 + mic.imag ** 2).sum(axis=0)
        pr = (ref.real ** 2 + ref.imag ** 2).sum(axis=0)
        peak, shift = self._weighted_cross(cross, pm, pr)
        return float(peak), int(shift)

    def _delay(self, mic: np.ndarray, ref_wide: np.ndarray) -> tuple[int, float]:
        """The echo delay in samples and its GCC peak: the frames' cross-spectra at every whole-hop lag
        (one FFT along the frame axis), each refined within a hop by its bins' phases. Only the band
        every phone passes (up to 4 kHz) is used."""
        n, lags, hop = mic.shape[0], self._lags, self._hop
        kd = self._delay_bins
        mic, ref_wide = mic[:, :kd], ref_wide[:, :kd]
        size = 1 << (n + lags - 1).bit_length()
        # cross[j, k] = sum_f mic[f, k] * conj(ref_wide[f + j, k]): a lag of (lags - j) hops
        spec_m = np.fft.fft(mic, size, axis=0)
        spec_r = np.fft.fft(ref_wide, size, axis=0)
        cross = np.fft.ifft(spec_m.conj() * spec_r, axis=0)[:lags + 1].conj()
        pm = (mic.real ** 2 + mic.imag ** 2).sum(axis=0)
        pr = ref_wide.real ** 2 + ref_wide.imag ** 2
        csum = np.zeros((n + lags + 1, kd))
        np.cumsum(pr, axis=0, out=csum[1:])
        pr_lag = csum[n:n + lags + 1] - csum[:lags + 1]  # the reference's power over the frames of each lag
        peaks, shifts = self._weighted_cross(cross, pm, pr_lag)
        j = int(np.argmax(peaks))
        delay = (lags - j) * hop + int(shifts[j])
        return int(min(max(delay, 0), self.max_delay)), float(peaks[j])

    def _learned_leak(self, res_power: np.ndarray, echo_power: np.ndarray, noise: np.ndarray,
                      context: np.ndarray) -> np.ndarray:
        """Per bin, how much echo the subtraction leaves (a fraction of its power), from the frames
        before the onset where the echo stands well above the room; never below the least leak."""
        loud = context[:, None] & (echo_power > 10.0 * noise)
        counted = loud.sum(axis=0)
        left = (np.maximum(res_power - noise, 0.0) * loud).sum(axis=0)
        leak = left / ((echo_power * loud).sum(axis=0) + _FLOOR)
        leak = np.where(counted >= 5, leak, self._leak)
        return np.clip(leak, self._leak, self._max_leak)


class _Verdict:
    """What ``analyse`` found: frames judged, frames with a talker, the delay, the leak, per-frame ratios."""

    __slots__ = ("delay", "frames", "leak", "ratio", "talk_frames")

    def __init__(self, *, talk_frames: int, frames: int, delay: int, leak: float, ratio: np.ndarray) -> None:
        self.talk_frames = talk_frames
        self.frames = frames
        self.delay = delay
        self.leak = leak
        self.ratio = ratio
