"""Is someone talking over our own reply, or is it only the reply coming back? A reference echo gate.

When the client has no echo canceller (a speakerphone, a browser with its audio
processing off), the reply we send leaks back into the microphone and the VAD
calls it speech. The server knows exactly what it played and when, so barge-in
asks this gate whether the microphone holds energy the echo of that reply cannot
explain: a talker of its own.

Why energy, not a waveform canceller: between the reply we send and the echo we
hear lie a network, a jitter buffer, a loudspeaker and a room, and the delay
drifts (clocks, late packets, a loaded client) by milliseconds within a second. A
per-bin complex fit (what a canceller subtracts) fails as soon as the delay moves
by a fraction of a period, and then calls the leftover a talker; band energies
over 16 ms frames do not care. The question is also easier than cancelling:
nothing has to be subtracted for a listener, only "is there more than the echo?".

Sans-I/O and one timeline: microphone and reference (the reply as it plays) are
positioned in samples of the input, at the input rate. Feeding copies samples
into two bounded rings (one slice assignment per message); the band energies of a
frame are computed the first time a question needs them, a block of frames per FFT
call, and kept, so a stream that never barges in pays for copies alone, and one that
does pays for each frame once. (Computing them as audio is fed would cost every
stream with a reply playing some 0.25 ms per second at 16 kHz, 125 frames of
microphone and reference at about 2 us each, most of them frames no question ever
looks at.)

Each frame is judged once. The full fit below (numpy, vectorised over frames, bands
and lags, over the last ``window_ms`` of input) runs when the last one is older than
``refit_ms``, found anyone but the echo, or explained it poorly; in between, the new
frames of a question are judged by the last fit's delay, path and noise alone (steps
4 and 5 over those frames: a few vectorised operations), and should that find anyone,
the full fit judges the window again: only it may say someone is talking. A delay
that moves too far for the smear to cover therefore shows up as "someone" and is
re-fitted at once; one that it covers is re-fitted within ``refit_ms``.

The full fit:

1. Band energies of microphone and reference frames (third-octave bands up to 8
   kHz, or the input's Nyquist: any rate, no resampler).
2. The echo delay: the lag (``min_delay_ms``..``max_delay_ms``, in frames) at
   which the reference's compressed band envelopes correlate best with the
   microphone's; near the one learned last, while that one still fits. Each
   frame then takes the lag within ``track_ms`` of it that fits best around that
   frame: the delay moves within a call (a client that ran dry plays on later).
3. The echo path: per band, the median ratio of microphone to reference energy
   over the frames where the reference is loud (a talker in a minority of the
   frames does not move it), capped by the path learned from stretches of echo
   alone. How well it fits (the ratio's spread in dB) is a double-talk detector
   of its own: an echo alone spreads 1-4 dB; beyond ``poor_fit_db`` the
   reference does not explain the microphone, and the fit is not the echo's.
4. The echo each frame may hold: that path times the reference's largest energy
   within ``jitter_ms`` of the delay, and its decaying tail (a room's
   reverberation), plus the room's noise per band (a low percentile).
5. A frame is someone talking when the energy above ``margin_db`` over that
   prediction is, over all bands, more than ``talk_ratio`` of the prediction.

Runs of talking frames, bridged over gaps shorter than ``bridge_ms`` (the pauses
inside a sentence), are the talker's speech: the core interrupts once the run
reaching the present has lasted ``interrupt_ms``, as it would without echo.
"""

from __future__ import annotations

import numpy as np

_FLOOR = 1e-10  # energy floor per band (float scale): far under any int16 signal
_BAND_EDGES_HZ = tuple(100.0 * 2 ** (k / 3) for k in range(20))  # third octaves, 100 Hz .. 6.3 kHz ...
_TOP_HZ = 8000.0  # ... up to 8 kHz (or Nyquist)
_NOISE_QUANTILE = 0.1  # a band's room noise: this percentile of its energy over the history held
_NEAR = 512  # samples: a write this close to the end of the last one is its continuation (Ring.append)
_BLOCK_BYTES = 1 << 17  # the frames of one FFT call, at most (float64 samples)
_ACTIVE = 1e-3  # a reference frame takes part in the path's fit when this close to its band's loudest


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

    def append(self, samples: np.ndarray, start: int) -> bool:
        """The usual write, fast: ``samples`` go on at most ``_NEAR`` samples from where the last write ended
        (the reference is slewed towards the microphone's clock a few samples at a time), and neither they
        nor a gap before them wrap. False (nothing written) when that is not so: ``write`` then handles it."""
        hi, cap, n = self.hi, self.capacity, samples.size
        end = start + n
        low = start if start < hi else hi
        i = low % cap
        if end < hi or start < self.lo or start - hi > _NEAR or i + end - low > cap or n > cap:
            return False
        buf = self.buf
        if start > hi:
            buf[i:i + start - hi] = 0  # (the skipped stretch is silence)
            i += start - hi
        elif start < hi:
            i = start % cap
        buf[i:i + n] = samples
        self.hi = end
        if end - cap > self.lo:
            self.lo = end - cap
        return True

    def _put(self, samples: np.ndarray, start: int) -> None:
        i = start % self.capacity
        n = samples.size
        first = min(n, self.capacity - i)
        self.buf[i:i + first] = samples[:first]
        if first < n:
            self.buf[:n - first] = samples[first:]

    def read(self, start: int, end: int) -> np.ndarray:
        """Samples [start, end) as int16 (a view of the ring where they are held without a wrap, else a
        copy); what is not held is zero."""
        a, b = max(start, self.lo), min(end, self.hi)
        i = a % self.capacity
        if a == start and b == end and i + (end - start) <= self.capacity:
            return self.buf[i:i + end - start]
        out = np.zeros(end - start, dtype=np.int16)
        if a < b:
            n = b - a
            first = min(n, self.capacity - i)
            out[a - start:a - start + first] = self.buf[i:i + first]
            if first < n:
                out[a - start + first:b - start] = self.buf[:n - first]
        return out


class _Bands:
    """Band energies of one ring's frames on the absolute frame grid, computed once and kept."""

    __slots__ = ("first", "gate", "ring", "rows")

    def __init__(self, gate: EchoGate, ring: _Ring) -> None:
        self.gate, self.ring = gate, ring
        self.first = 0  # frame index of rows[0]
        self.rows = np.zeros((0, gate.bands), dtype=np.float64)

    def get(self, first: int, last: int) -> np.ndarray:
        """Energies of frames first..last-1 (frames beyond what is written must not be asked for)."""
        have_lo, have_hi = self.first, self.first + len(self.rows)
        if first < have_lo or first > have_hi:  # not contiguous with what is kept: start over
            self.first, self.rows = first, self.gate._energies(self.ring, first, last)
        elif last > have_hi:
            self.rows = np.concatenate([self.rows, self.gate._energies(self.ring, have_hi, last)])
        keep = self.gate._keep_frames
        if len(self.rows) > keep:  # bounded: older frames than any question looks at are dropped
            drop = min(len(self.rows) - keep, first - self.first)
            if drop > 0:
                self.rows = self.rows[drop:]
                self.first += drop
        i = first - self.first
        return self.rows[i:i + last - first]


class _Fit:
    """What the last full fit learned: enough to judge the frames after it without fitting again."""

    __slots__ = ("clean", "lag", "last", "noise", "path")

    def __init__(self, lag: int, path: np.ndarray, noise: np.ndarray, last: int, clean: bool) -> None:
        self.lag = lag  # the delay (frames) at the end of its window
        self.path = path  # the echo path per band it judged with
        self.noise = noise  # the room's noise per band
        self.last = last  # one past the last frame it judged
        self.clean = clean  # it found the echo alone, well explained: frames after it may be judged by it


class EchoGate:
    """Is someone talking over the reply's echo? One per stream."""

    def __init__(self, rate: int, *, max_delay_ms: float = 600.0, min_delay_ms: float = -48.0, history_s: float = 3.0,
                 window_ms: float = 1500.0, max_ahead_s: float = 2.0, hop_ms: float = 16.0,
                 jitter_ms: float = 32.0, tail_ms: float = 96.0, tail_db_per_frame: float = 3.0,
                 margin_db: float = 3.0, talk_ratio: float = 1.0, bridge_ms: float = 250.0,
                 min_run_frames: int = 3, path_quantile: float = 0.5, growth_db: float = 3.0,
                 learn_spread_db: float = 3.5, poor_fit_db: float = 5.0, keep_score: float = 0.8,
                 track_ms: float = 64.0, local_ms: float = 200.0, recent_s: float = 2.0,
                 refit_ms: float = 1000.0) -> None:
        """``max_delay_ms``: the longest echo delay looked for (network and device included).
        ``history_s``: microphone kept; ``window_ms``: what one question looks at (a longer one is more
        exposed to the delay's drift). ``jitter_ms``: how far the delay may wander within the window;
        ``tail_ms`` / ``tail_db_per_frame``: the reverberant tail an echo may carry after the sound that
        made it. ``margin_db`` / ``talk_ratio``: how much more than the predicted echo, and how much of
        it, makes a frame someone talking. ``bridge_ms``: gaps in a talker's frames that still count as
        one run; ``min_run_frames``: fewer talking frames than this are a click, not a talker.
        ``refit_ms``: how long the frames after a full fit may be judged by it alone (the delay's drift
        and the echo path's changes are followed this often, at least)."""
        if rate < 4000:
            raise ValueError(f"rate must be at least 4000 Hz, got {rate}")
        if not 0 < max_delay_ms <= 2000:
            raise ValueError("max_delay_ms must be in (0, 2000]")
        self.rate = rate
        hop = self._hop = int(round(hop_ms * rate / 1000))
        frame = self._frame = 2 * hop
        self._window = np.hanning(frame + 1)[:frame] / 32768.0  # periodic Hann (flat sum at half overlap), int16 scale
        freqs = np.fft.rfftfreq(frame, 1.0 / rate)
        top = min(_TOP_HZ, rate / 2)
        edges = [e for e in _BAND_EDGES_HZ if e < top] + [top]
        self.bands = len(edges) - 1
        matrix = np.zeros((freqs.size, self.bands))
        for b in range(self.bands):
            matrix[(freqs >= edges[b]) & (freqs < edges[b + 1]), b] = 1.0
        self._matrix2 = np.repeat(matrix, 2, axis=0)  # per (re, im) of each bin
        self._block = max(_BLOCK_BYTES // (8 * frame), 1)
        self._work = (np.empty((self._block, frame)), np.empty((self._block, frame // 2 + 1), dtype=np.complex128),
                      np.empty((self._block, 2 * (frame // 2 + 1))))
        self._lags = int(np.ceil(max_delay_ms * rate / 1000 / hop))  # frames of delay searched, at most ...
        self._lag_lo = min(int(np.floor(min_delay_ms * rate / 1000 / hop)), 0)  # ... and at least
        self.max_delay = self._lags * hop
        self._window_frames = max(int(round(window_ms * rate / 1000 / hop)), 8)
        self._jitter = int(round(jitter_ms * rate / 1000 / hop))
        tail = int(round(tail_ms * rate / 1000 / hop))
        # the smear: the echo at frame t may hold reference frames t-D-tail .. t-D+jitter (weights per offset)
        self._smear = np.concatenate([np.ones(2 * self._jitter + 1),
                                      10.0 ** (-tail_db_per_frame * np.arange(1, tail + 1) / 10)])
        self._margin = 10.0 ** (margin_db / 10)
        self._talk_ratio = talk_ratio
        self._bridge = max(int(round(bridge_ms * rate / 1000 / hop)), 1)
        self._min_run = min_run_frames
        self._path_quantile = path_quantile
        self._growth = 10.0 ** (growth_db / 10)
        self._learn_spread = learn_spread_db
        self._poor_fit = poor_fit_db
        self._keep_score = keep_score
        self._track = int(round(track_ms * rate / 1000 / hop))
        self._local = max(int(round(local_ms * rate / 1000 / hop)), 1)
        self._memory: tuple[int, np.ndarray, int] | None = None  # (lag, path, when) learned from echo alone
        self._recent = int(recent_s * rate)  # a path learned this recently: only lags near its are searched
        history = int(history_s * rate)
        self._mic = _Ring(history)
        self._ref = _Ring(history + self.max_delay + int(max_ahead_s * rate))
        self._keep_frames = (history + self.max_delay) // hop + 2 * len(self._smear) + 4
        self._mic_bands = _Bands(self, self._mic)
        self._ref_bands = _Bands(self, self._ref)
        self._played: list[list[int]] = []  # [start, end) stretches of reference, merged when they touch
        self.delay: int | None = None  # the echo delay (samples) of the last full fit, for diagnostics
        self._refit = max(int(round(refit_ms * rate / 1000 / hop)), 1)  # frames a fit judges for, at most
        self._fit: _Fit | None = None
        self._flags = np.zeros(0, dtype=bool)  # the talker flag of every frame judged, from _flags_first
        self._flags_first = 0

    # ---- feeding: copies only --------------------------------------------------------------

    def reference(self, samples: np.ndarray, start: int) -> None:
        """Reply audio as it plays: int16 mono at ``rate`` whose first sample plays at input position
        ``start``. A stretch may begin before the last one ended (the caller re-anchored its timing): the
        later audio replaces the earlier from there on."""
        if type(samples) is not np.ndarray or samples.ndim != 1:
            samples = np.asarray(samples, dtype=np.int16).reshape(-1)
        n = samples.size
        if n == 0:
            return
        end = start + n
        played = self._played
        if played and played[-1][0] <= start <= played[-1][1] + self._hop and self._ref.append(samples, start):
            played[-1][1] = max(played[-1][1], end)  # the usual case: the reply playing on, one copy
            return
        self._ref.write(samples, start)
        if played and played[-1][1] >= start:
            played[-1][1] = max(played[-1][1], end)
        else:
            played.append([start, end])
        while played and played[0][1] <= self._ref.lo:
            played.pop(0)

    def microphone(self, samples: np.ndarray, start: int) -> None:
        """Input audio at ``rate`` from input position ``start`` (contiguous with the last call). Called for
        every message of every stream: one copy into the ring, nothing computed."""
        ring = self._mic
        if start == ring.hi and type(samples) is np.ndarray and samples.ndim == 1:  # the usual case, inline
            n, cap = samples.size, ring.capacity
            i = start % cap
            if i + n <= cap:
                ring.buf[i:i + n] = samples
                ring.hi = end = start + n
                if end - cap > ring.lo:
                    ring.lo = end - cap
                return
        samples = np.asarray(samples, dtype=np.int16).reshape(-1)
        if samples.size and not ring.append(samples, start):
            ring.write(samples, start)

    @property
    def active(self) -> bool:
        """Reference audio within ``max_delay`` of the latest input: its echo may still be coming."""
        now = self._mic.hi
        return any(s < now and e > now - self.max_delay for s, e in self._played)

    def _playing(self, start: int, end: int) -> bool:
        return any(s < end and e > start for s, e in self._played)

    # ---- the question ----------------------------------------------------------------------

    def analyse(self, start: int, end: int) -> Verdict | None:
        """What the input between positions ``start`` and ``end`` (given to ``microphone``) holds beyond
        the echo. None when there is nothing to judge: no reference could be echoing then (every sound is
        the user's), or less than a frame of input.

        Each frame is judged once, when first asked about: by the full fit (delay search and path fit over
        the window) when the last fit is older than ``refit_ms``, found anyone but the echo, or explained
        it poorly; else by the last fit's delay and path alone (a few vectorised operations over the new
        frames), and if that finds anyone, the full fit judges again (only it may say someone talks)."""
        hop, frame = self._hop, self._frame
        end = min(end, self._mic.hi)
        if end - max(start, self._mic.lo) < frame or not self._playing(start - self.max_delay, end):
            return None
        last = (end - frame) // hop + 1  # frames first..last-1 end by ``end`` (frame k starts at k * hop)
        first = max(last - self._window_frames, -(-self._mic.lo // hop))
        span = max(-(-start // hop), first)  # the first frame of the question's own stretch
        if last - first < 4 or span >= last:
            return None
        fit, have = self._fit, self._flags_first + len(self._flags)  # frames judged: flags_first..have-1
        if have < first:  # nothing judged in this window yet
            self._flags, self._flags_first, have = self._flags[:0], first, first
        if (fit is None or not fit.clean or last - fit.last >= self._refit or last < have
                or self._flags_first > first):
            self._full_fit(first, last, end)
        elif last > have:
            new = self._extend(fit, have, last)
            if new.any():  # someone, or the delay moved: the full fit decides
                self._full_fit(first, last, end)
            else:
                keep = self._flags[first - self._flags_first:]
                self._flags, self._flags_first = np.concatenate([keep, new]), first
                memory = self._memory  # the path learned from echo alone still explains it: still recent
                if memory is not None:
                    self._memory = (memory[0], memory[1], end)
        flags = self._flags[span - self._flags_first:last - self._flags_first]
        assert self.delay is not None
        return Verdict(flags, span * hop, hop, self.delay, self._bridge, self._min_run)

    def _full_fit(self, first: int, last: int, end: int) -> None:
        """The delay search and the path fit over frames first..last-1; every frame of them judged again."""
        hop, n = self._hop, last - first
        mic = self._mic_bands.get(first, last)
        lag_lo, lag_hi, smear = self._lag_lo, self._lags, self._smear
        pre, post = len(smear) - 1 - self._jitter, self._jitter  # reference frames before / after the delay
        # ref[k] is frame (origin + k)
        ref = self._ref_rows(first - lag_hi - pre, last + post - lag_lo, last)
        held = self._mic_bands.get(max(self._mic_bands.first, last - self._keep_frames), last)
        low = int(_NOISE_QUANTILE * (len(held) - 1))
        noise = np.partition(held, low, axis=0)[low] + _FLOOR
        n_lags = lag_hi - lag_lo + 1
        memory = self._memory
        j0, j1 = 0, n_lags  # the lags searched: all of them, or (with a recent path learned) those near it
        if memory is not None and end - memory[2] < self._recent:
            mj = lag_hi - memory[0]
            j0, j1 = max(mj - self._track - 1, 0), min(mj + self._track + 1, n_lags - 1) + 1
        ref_wide = ref[pre + j0:pre + j1 - 1 + n]
        contrib = np.zeros((n_lags, n))
        contrib[j0:j1] = self._scores(mic, ref_wide, noise)  # [j, t]: a lag of (lag_hi - j) frames
        scores = np.where(np.arange(n_lags) >= j0, contrib.sum(axis=1), -np.inf)
        scores[j1:] = -np.inf
        j = int(np.argmax(scores))
        if memory is not None:  # the delay of a call drifts, it does not jump: the last one, while it fits
            mj = lag_hi - memory[0]
            near = np.arange(max(mj - 1, 0), min(mj + 1, n_lags - 1) + 1)
            k = int(near[np.argmax(scores[near])])
            if scores[k] >= self._keep_score * scores[j]:
                j = k
        self.delay = (lag_hi - j) * hop
        # Within the window the delay may still move (a client that ran dry plays the rest late): each frame
        # takes the lag within ``track`` of that one that fits best around it (its neighbours' evidence).
        lo_j, hi_j = max(j - self._track, 0), min(j + self._track, n_lags - 1) + 1
        k = self._local
        padded = np.zeros((hi_j - lo_j, n + 2 * k + 1))
        padded[:, k + 1:k + 1 + n] = contrib[lo_j:hi_j]
        local = np.cumsum(padded, axis=1)
        local = local[:, 2 * k + 1:] - local[:, :-2 * k - 1]  # the sum over frames t-k..t+k, per lag
        frame_lag = lag_hi - (lo_j + np.argmax(local, axis=0))  # [n]
        # each frame's reference at its delay: mic frame t is frame first + t, its echo frame first + t - lag
        base = np.arange(n) + lag_hi + pre - frame_lag
        aligned = ref[base]
        fitted, spread = self._path(mic, aligned, noise)
        # a talker over the echo inflates the fit; the path learned from echo alone caps it (while the echo
        # path itself may grow by ``growth_db`` from one answer to the next)
        path = fitted if memory is None else np.minimum(fitted, memory[1] * self._growth)
        if spread > self._poor_fit:  # the reference does not explain what the microphone hears: a talker
            path = np.zeros_like(fitted) if memory is None else memory[1]  # (the fit is theirs, not the echo's)
        # the smeared reference: for each mic frame, the largest weighted frame from -pre to +post around it
        around = ref[base[:, None] + np.arange(-pre, post + 1)[None, :]]  # [n, offsets, bands]
        smeared = (around * smear[::-1][None, :, None]).max(axis=1)
        expected = smeared * path + noise
        excess = np.maximum(mic - self._margin * expected, 0.0).sum(axis=1)
        talking = excess > self._talk_ratio * expected.sum(axis=1)
        anyone = bool(talking.any())
        if not anyone and spread <= self._learn_spread:
            self._memory = (lag_hi - j, fitted, end)  # echo alone, well explained: what the path is
        self._fit = _Fit(int(frame_lag[-1]), path, noise, last, not anyone and spread <= self._poor_fit)
        self._flags, self._flags_first = talking, first

    def _extend(self, fit: _Fit, first: int, last: int) -> np.ndarray:
        """Frames first..last-1 judged by the last fit alone: its latest delay, its path, its noise."""
        pre, post = len(self._smear) - 1 - self._jitter, self._jitter
        mic = self._mic_bands.get(first, last)
        ref = self._ref_rows(first - fit.lag - pre, last - fit.lag + post, last)  # [n + pre + post]
        width = pre + post + 1
        s0, s1 = ref.strides
        around = np.lib.stride_tricks.as_strided(ref, (len(ref) - width + 1, width, ref.shape[1]), (s0, s0, s1),
                                                 writeable=False)  # [n, offsets, bands]
        smeared = (around * self._smear[::-1, None]).max(axis=1)
        expected = smeared * fit.path + fit.noise
        excess = np.maximum(mic - self._margin * expected, 0.0).sum(axis=1)
        return excess > self._talk_ratio * expected.sum(axis=1)

    def _ref_rows(self, first: int, last: int, written: int) -> np.ndarray:
        """Reference band energies of frames first..last-1: those before ``written`` (the mic's frames so
        far: no reference sent from now on can reach them) kept, those from there on computed each time."""
        cut = min(max(written, first), last)
        rows = self._ref_bands.get(first, cut) if cut > first else np.zeros((0, self.bands))
        if last > cut:
            rows = np.concatenate([rows, self._energies(self._ref, cut, last)])
        return rows

    def _energies(self, ring: _Ring, first: int, last: int) -> np.ndarray:
        """Band energies of frames first..last-1 of ``ring``'s timeline: one FFT call per block of frames,
        into buffers kept for it (blocks of at most ``_BLOCK_BYTES``: a larger temporary costs several times
        as much per frame, fresh pages from the system rather than memory the allocator keeps)."""
        out = np.empty((max(last - first, 0), self.bands))
        hop, frame, step = self._hop, self._frame, self._block
        windowed, spec, power = self._work
        for a in range(first, last, step):
            b = min(a + step, last)
            n = b - a
            samples = ring.read(a * hop, (b + 1) * hop)
            if not samples.any():  # (the reference before a reply began, after it ended: no FFT of silence)
                out[a - first:b - first] = 0.0
                continue
            frames = np.lib.stride_tricks.as_strided(samples, (n, frame), (hop * samples.itemsize,
                                                                           samples.itemsize), writeable=False)
            np.multiply(frames, self._window, out=windowed[:n])  # (the window holds the int16 scale)
            np.fft.rfft(windowed[:n], axis=1, out=spec[:n])
            parts = spec[:n].view(np.float64)  # (re, im) pairs: re^2 + im^2 summed per band by one product
            np.multiply(parts, parts, out=power[:n])
            np.matmul(power[:n], self._matrix2, out=out[a - first:b - first])
        return out

    def _scores(self, mic: np.ndarray, ref_wide: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """How well the reference's band envelopes follow the microphone's at each lag, frame by frame:
        each frame's share of the normalised correlation of cube-root energies, summed over the bands.
        Row j is a lag of (lags - j) frames; a row's sum is that lag's score over the window."""
        n = mic.shape[0]
        m = np.cbrt(np.maximum(mic - noise, 0.0)).T  # [bands, n]
        m -= m.mean(axis=1, keepdims=True)
        r = np.ascontiguousarray(np.cbrt(ref_wide.T))  # [bands, n + lags]
        lags = r.shape[1] - n + 1
        s0, s1 = r.strides
        views = np.lib.stride_tricks.as_strided(r, (lags, r.shape[0], n), (s1, s0, s1), writeable=False)  # [j, b, t]
        sums = np.zeros((r.shape[0], r.shape[1] + 1, 2))  # running sums of r and r^2 along the frames
        np.cumsum(r, axis=1, out=sums[:, 1:, 0])
        np.cumsum(r * r, axis=1, out=sums[:, 1:, 1])
        window = (sums[:, n:] - sums[:, :lags]).transpose(1, 0, 2)  # [lags, bands, 2]: each lag's n frames
        r_sum = window[..., 0]
        r_var = window[..., 1] - r_sum * r_sum / n
        weight = 1.0 / np.sqrt(r_var * (m * m).sum(axis=1) + 1e-30)  # [lags + 1, bands]
        # (m's mean is zero, so r's mean needs no correction in the products)
        return np.einsum("jbt,bt,jb->jt", views, m, weight)

    def _path(self, mic: np.ndarray, aligned: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, float]:
        """Per band, the echo's share of the reference's energy: the ``path_quantile`` of the ratio over
        the frames where the reference is loud (a talker only adds energy: most frames would have to hold
        one to move the median). A band the reference never fills has none. And how well it fits: the
        median deviation of the ratio in dB over the cells well above the room's noise (an echo alone:
        1-4 dB; a talker the reference does not explain: 5-9)."""
        loud = aligned > _ACTIVE * aligned.max(axis=0, keepdims=True) + _FLOOR
        ratio = np.maximum(mic - noise, 0.0) / (aligned + _FLOOR)
        path = _column_quantile(ratio, loud, self._path_quantile, least=4)
        heard = loud & (mic > 4 * noise)
        spread = np.inf
        if heard.sum() >= 8:
            db = 10 * np.log10(ratio + 1e-30)
            centre = _column_quantile(db, heard, 0.5, least=1)
            spread = _median(np.abs(db - centre)[heard])
        return path, spread


def _column_quantile(values: np.ndarray, mask: np.ndarray, q: float, least: int) -> np.ndarray:
    """Per column, the ``q`` quantile (lower) of the values where ``mask``; 0 for a column with fewer than
    ``least`` of them. (np.nanquantile does this a column at a time, many times slower.)"""
    ordered = np.sort(np.where(mask, values, np.inf), axis=0)
    count = mask.sum(axis=0)
    pick = np.take_along_axis(ordered, (np.maximum(count - 1, 0) * q).astype(np.intp)[None, :], axis=0)[0]
    return np.where(count >= least, pick, 0.0)


def _median(values: np.ndarray) -> float:
    """np.median of a 1-D array, without its checks (a tenth of its cost at this size)."""
    n = values.size
    k = n // 2
    if n % 2:
        return float(np.partition(values, k)[k])
    pair = np.partition(values, (k - 1, k))
    return float(pair[k - 1] + pair[k]) / 2


class Verdict:
    """One answer of the gate: which frames of the question's stretch hold a talker of their own."""

    __slots__ = ("bridge", "delay", "flags", "hop", "min_run", "start")

    def __init__(self, flags: np.ndarray, start: int, hop: int, delay: int, bridge: int, min_run: int) -> None:
        self.flags = flags  # per frame from ``start``, hop apart: energy the echo does not explain
        self.start = start
        self.hop = hop
        self.delay = delay
        self.bridge = bridge
        self.min_run = min_run

    @property
    def talk_frames(self) -> int:
        return int(self.flags.sum())

    @property
    def heard(self) -> bool:
        """Anyone at all besides the echo (a click of fewer than ``min_run`` frames is not anyone)."""
        return self.talk_frames >= self.min_run

    def run_start(self) -> int | None:
        """Where the talker's current run began (input position): talking frames bridged over gaps
        shorter than ``bridge``, the last one within ``bridge`` of the end; None when nobody is talking
        now."""
        idx = np.flatnonzero(self.flags)
        if idx.size < self.min_run or self.flags.size - 1 - idx[-1] > self.bridge:
            return None
        gaps = np.flatnonzero(np.diff(idx) > self.bridge)
        first = idx[gaps[-1] + 1] if gaps.size else idx[0]
        if idx.size - (np.searchsorted(idx, first)) < self.min_run:
            return None
        return self.start + int(first) * self.hop
