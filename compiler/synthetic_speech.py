"""Speech-like audio made offline: silences and voiced stretches (a glottal pulse train with
vibrato through vowel formant filters, syllable-rate envelope) over low noise.

Used to drive voice-activity models (silero-vad) over a few seconds when no recording may
be downloaded. It is not speech, but it has speech's spectral shape, and a VAD's decisions
over it change between silence and the voiced parts, which is what a comparison needs.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

# (F1, F2, F3) in Hz of five vowels (Peterson & Barney averages)
VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410)]


def _resonator(signal: np.ndarray, freq: float, bandwidth: float, rate: int) -> np.ndarray:
    r = np.exp(-np.pi * bandwidth / rate)
    theta = 2 * np.pi * freq / rate
    return lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], signal)


def voiced(seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f0 = rng.uniform(100, 180) * (1 + 0.03 * np.sin(2 * np.pi * 5 * t))  # pitch with vibrato
    phase = np.cumsum(f0 / rate)
    pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)
    out = np.zeros(n)
    seg = int(0.15 * rate)  # a new vowel every 150 ms
    for start in range(0, n, seg):
        part = pulses[start:start + seg]
        formants = VOWELS[rng.integers(len(VOWELS))]
        y = sum(_resonator(part, f, 80 + 40 * i, rate) for i, f in enumerate(formants))
        out[start:start + seg] = y
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2  # syllables
    out *= envelope
    return out / (np.max(np.abs(out)) + 1e-9) * 0.5


def synthetic_speech(seconds: float = 4.0, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """float32 audio in [-1, 1]: 0.5 s silence, then voiced (1 s) / silence (0.5 s) alternating."""
    rng = np.random.default_rng(seed)
    parts, total, speaking = [], 0.0, False
    while total < seconds:
        length = min(1.0 if speaking else 0.5, seconds - total)
        parts.append(voiced(length, rate, rng) if speaking else np.zeros(int(length * rate)))
        total += length
        speaking = not speaking
    audio = np.concatenate(parts)
    audio += rng.normal(0, 0.003, audio.shape)  # room noise
    return audio.astype(np.float32)
