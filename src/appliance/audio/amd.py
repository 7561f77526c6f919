"""Answering-machine detection (AMD) for outbound calls: a live "hello?" or a voicemail greeting.

Fed the callee's audio from the moment the call is answered (200 OK), as the media port delivers
it: 16 kHz (or 8 kHz) mono signed 16-bit little-endian PCM, any frame size. Two stages:

1. **Decision** (:meth:`AnsweringMachineDetector.feed`): ``human``, ``machine`` or ``unknown``,
   with the audio time it took (ms since the first sample). Features:

   * *speech length and pattern*, from Silero VAD (the project's VAD; the ``silero_vad.onnx``
     of the verified model store, run through pipecat's ``SileroOnnxModel`` on 32 ms windows):
     a live answer is a short utterance followed by silence (the person waits for us); a
     greeting is long, near-continuous speech. The state machine is the one of Asterisk's
     ``AMD()`` application (``apps/app_amd.c``; parameters documented in Asterisk's
     ``amd.conf.sample``): *initial silence*, *greeting* (the longest a human answer talks),
     *after-greeting silence* (silence that makes it human), *total analysis time*,
     *minimum word length*, *between-words silence* and *maximum number of words*.
     :data:`ASTERISK_DEFAULTS` holds Asterisk's defaults (2500, 1500, 800, 5000, 100, 50 ms and
     3 words); :data:`TUNED` holds the values tuned from them on the tuning set of
     ``benchmarks/amd.py`` (docs/decisions/0022-answering-machine-detection.md gives the
     figures). Departure from Asterisk: initial silence gives ``unknown`` (Asterisk: MACHINE),
     since dead air is no evidence of a machine and the dialler must not leave a voicemail on a
     person who has not spoken yet.
   * *the beep* (:class:`BeepDetector`): a steady single tone. A beep before the decision
     decides ``machine`` when it ends, and no ``human`` decision is made while a tone is
     sounding (a short greeting, "Please leave a message.", then the beep).

2. **Where to leave the message** (:attr:`AnsweringMachineDetector.message_cue`, or
   :meth:`AnsweringMachineDetector.wait_for_beep`): ``beep_guard_ms`` after the end of the
   beep; without a beep, when the greeting has been followed by ``greeting_end_silence_ms`` of
   silence; at the latest after ``max_message_wait_ms``.

Beep detection: each 20 ms frame (Hann window, zero-padded FFT, ~15.6 Hz bins) is *tonal* when
its energy is above ``beep_min_dbfs`` and the spectral peak between 400 and 2500 Hz holds at
least ``beep_min_tonality`` of the frame's 100-3600 Hz energy (peak +-3 bins; counting from
100 Hz keeps a voice's fundamental in the total, so a vowel's strong second harmonic is not a
tone). That is the tone test of Asterisk's ``main/dsp.c`` (Goertzel tone energy compared with
the frame's total energy) with a spectral peak search instead of a fixed Goertzel bank, since
voicemail beeps use any frequency (typically 400-2000 Hz). A beep is a run of tonal frames
whose frequency stays within ``beep_max_drift_hz`` of the run's first frames (the
low-variance frequency criterion of FreeSWITCH's ``mod_avmd``), lasting ``beep_min_ms`` to
``beep_max_ms`` (100-1500 ms: beeps are typically 100-1000 ms; a longer steady tone such as a
2 s ringback burst is not a beep).

Limits (what fools it): a live person who answers with a long sentence ("Dr. Smith's office,
this is Ann speaking, how can I help you today?") reads as a greeting; a very short greeting
("Leave a message.") followed by a beep is still ``machine`` (the beep), without a beep it reads
as human; a short ringback fragment (e.g. the UK's 0.4 s bursts) or a whistle looks like a beep.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "ASTERISK_DEFAULTS",
    "TUNED",
    "AmdParams",
    "AmdResult",
    "AnsweringMachineDetector",
    "Beep",
    "BeepDetector",
    "Decision",
    "MessageCue",
]

_RATES = (8000, 16000)


class Decision(StrEnum):
    """What answered the call."""

    HUMAN = "human"
    MACHINE = "machine"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class AmdParams:
    """Thresholds of the detector; every time in milliseconds of audio.

    The first eight are Asterisk ``AMD()``'s parameters (same meaning, see ``amd.conf.sample``);
    the rest belong to the beep detector and the second stage.
    """

    initial_silence_ms: int = 2500
    greeting_ms: int = 1500
    after_greeting_silence_ms: int = 800
    total_analysis_ms: int = 5000
    min_word_ms: int = 100
    between_words_silence_ms: int = 50
    max_words: int = 3
    max_word_ms: int = 5000
    #: Silero speech probability that starts speech, and the lower one that ends it (hysteresis,
    #: as silero-vad's own ``get_speech_timestamps``: threshold 0.5, end at threshold - 0.15).
    vad_threshold: float = 0.5
    vad_end_threshold: float = 0.35
    beep_min_ms: int = 100
    beep_max_ms: int = 1500
    beep_min_tonality: float = 0.8
    beep_min_dbfs: float = -45.0
    beep_max_drift_hz: float = 40.0
    #: Second stage: the message starts this long after the end of the beep (the beep's end is
    #: known to a 20 ms frame; the recorder starts after the beep).
    beep_guard_ms: int = 100
    #: Second stage without a beep: silence after the greeting that means "it is recording now".
    greeting_end_silence_ms: int = 2000
    #: Second stage: leave the message by this time (ms since answer) whatever was heard.
    max_message_wait_ms: int = 30000


#: Asterisk ``AMD()``'s defaults (``amd.conf.sample``): the baseline the tuned values start from.
ASTERISK_DEFAULTS = AmdParams()

#: Tuned on the tuning set of ``benchmarks/amd.py`` (other wording and voices than the
#: reported set); see docs/decisions/0022-answering-machine-detection.md.
TUNED = replace(
    ASTERISK_DEFAULTS,
    initial_silence_ms=3500,  # a 2 s ringback cycle plus the answer's delay comes before speech
    greeting_ms=2000,  # "Doctor Smith's office, this is Ann." is ~1.6-1.9 s of speech
    after_greeting_silence_ms=1000,  # greetings pause up to ~0.8 s between sentences
    total_analysis_ms=6000,  # initial silence + greeting must fit
    between_words_silence_ms=250,  # Silero's 32 ms windows: a 50 ms gap is one window
)


@dataclass(frozen=True)
class AmdResult:
    """The first-stage decision.

    Attributes:
        decision: human, machine or unknown.
        decided_at_ms: audio time from the first sample fed to the decision (ms).
        cause: which rule decided (``after_greeting_silence``, ``long_greeting``,
            ``max_words``, ``long_word``, ``beep``, ``initial_silence``, ``total_analysis``).
        speech_ms: speech heard before the decision (ms, Silero VAD).
        words: speech segments heard (Asterisk's "words": runs of speech split by
            ``between_words_silence_ms`` of silence, each at least ``min_word_ms`` long).
    """

    decision: Decision
    decided_at_ms: int
    cause: str
    speech_ms: int
    words: int


@dataclass(frozen=True)
class Beep:
    """A detected beep: start and end in ms since the first sample, frequency in Hz."""

    start_ms: int
    end_ms: int
    freq_hz: float


@dataclass(frozen=True)
class MessageCue:
    """When to start speaking the voicemail message.

    Attributes:
        at_ms: audio time (ms since the first sample) after which the message may start; for
            a beep, ``beep_guard_ms`` after its end (this may lie a little ahead of the audio
            fed so far).
        cause: ``beep`` (the end of the beep), ``greeting_end`` (silence after the greeting, no
            beep heard) or ``timeout`` (``max_message_wait_ms`` reached).
        beep: the beep, when one was heard.
    """

    at_ms: int
    cause: str
    beep: Beep | None


def _pcm(frame: bytes | npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    if isinstance(frame, bytes | bytearray | memoryview):
        raw = bytes(frame)
        if len(raw) % 2:
            raise ValueError(f"PCM frame of {len(raw)} bytes: 16-bit samples need an even count")
        return np.frombuffer(raw, dtype="<i2").astype(np.int16)
    arr = np.asarray(frame)
    if arr.dtype != np.int16 or arr.ndim != 1:
        raise ValueError(f"expected 1-D int16 samples, got {arr.dtype} with shape {arr.shape}")
    return arr


class BeepDetector:
    """Streaming detector of a steady single tone (a voicemail beep) in 20 ms frames.

    Args:
        sample_rate: 8000 or 16000 Hz.
        params: thresholds (``beep_*`` fields of :class:`AmdParams`).

    Raises:
        ValueError: another sample rate.
    """

    _BAND = (100.0, 3600.0)
    _PEAK_RANGE = (400.0, 2500.0)
    _HALF_WIDTH = 3  # bins either side of the peak counted as the tone

    def __init__(self, sample_rate: int = 16000, params: AmdParams = TUNED) -> None:
        if sample_rate not in _RATES:
            raise ValueError(f"sample rate {sample_rate} Hz; expected one of {_RATES}")
        self.sample_rate = sample_rate
        self.params = params
        self._hop = sample_rate // 50  # 20 ms
        self._nfft = 1024 if sample_rate == 16000 else 512  # 15.625 Hz bins at both rates
        self._window = np.hanning(self._hop).astype(np.float64)
        freqs = np.fft.rfftfreq(self._nfft, 1.0 / sample_rate)
        self._band = (freqs >= self._BAND[0]) & (freqs <= self._BAND[1])
        self._peak = (freqs >= self._PEAK_RANGE[0]) & (freqs <= self._PEAK_RANGE[1])
        self._freqs = freqs
        self._buf = np.zeros(0, dtype=np.int16)
        self._frames = 0
        self._run: list[float] = []  # peak frequencies of the current tonal run
        self._run_start = 0  # frame index where the run started
        self.beeps: list[Beep] = []

    def frame_tone(self, frame: npt.NDArray[np.int16]) -> float | None:
        """The tone frequency (Hz) of one 20 ms frame, or None when it is not tonal.

        Args:
            frame: ``sample_rate / 50`` int16 samples.
        """
        x = frame.astype(np.float64) / 32768.0
        rms = float(np.sqrt(np.mean(x * x)))
        if rms <= 0.0 or 20.0 * np.log10(rms) < self.params.beep_min_dbfs:
            return None
        spec = np.abs(np.fft.rfft(x * self._window, self._nfft)) ** 2
        band = float(spec[self._band].sum())
        if band <= 0.0:
            return None
        peak_spec = np.where(self._peak, spec, 0.0)
        k = int(np.argmax(peak_spec))
        lo, hi = max(k - self._HALF_WIDTH, 0), k + self._HALF_WIDTH + 1
        if float(spec[lo:hi].sum()) / band < self.params.beep_min_tonality:
            return None
        # Parabolic interpolation of the peak bin (sub-bin frequency).
        a, b, c = spec[k - 1], spec[k], spec[k + 1]
        den = a - 2 * b + c
        shift = 0.5 * (a - c) / den if den != 0 else 0.0
        return float(self._freqs[k] + shift * self.sample_rate / self._nfft)

    def feed(self, samples: bytes | npt.NDArray[np.int16]) -> list[Beep]:
        """Feed samples; returns the beeps that ended in them (also kept in :attr:`beeps`).

        Raises:
            ValueError: not 16-bit PCM.
        """
        self._buf = np.concatenate([self._buf, _pcm(samples)])
        done: list[Beep] = []
        while len(self._buf) >= self._hop:
            frame, self._buf = self._buf[: self._hop], self._buf[self._hop :]
            f = self.frame_tone(frame)
            steady = f is not None and (
                not self._run
                or abs(f - float(np.median(self._run[:5]))) <= self.params.beep_max_drift_hz
            )
            if steady and f is not None:
                if not self._run:
                    self._run_start = self._frames
                self._run.append(f)
            else:
                beep = self._close_run()
                if beep is not None:
                    done.append(beep)
                if f is not None:  # a tonal frame at another frequency starts a new run
                    self._run_start, self._run = self._frames, [f]
            self._frames += 1
        self.beeps.extend(done)
        return done

    @property
    def tone_ms(self) -> int:
        """Length of the tonal run in progress (ms); 0 when none."""
        return len(self._run) * 20

    @property
    def run_start_ms(self) -> int | None:
        """Start (ms) of the tonal run in progress, or None."""
        return self._run_start * 20 if self._run else None

    def _close_run(self) -> Beep | None:
        n = len(self._run)
        freqs, self._run = self._run, []
        if n == 0 or not (self.params.beep_min_ms <= n * 20 <= self.params.beep_max_ms):
            return None
        start = self._run_start * 20
        return Beep(
            start_ms=start, end_ms=start + n * 20, freq_hz=round(float(np.median(freqs)), 1)
        )


class AnsweringMachineDetector:
    """Streaming answering-machine detector for one answered outbound call.

    Args:
        vad_model_path: ``silero_vad.onnx`` in the model store (``models/store/vad``); one
            ONNX Runtime session per detector (Silero keeps recurrent state). Or a loaded
            model: a callable ``(window, sample_rate) -> [[probability]]`` taking one 32 ms
            float32 window in [-1, 1) (pipecat's ``SileroOnnxModel`` is one, reset before use;
            ``benchmarks/amd.py`` replays recorded probabilities this way for its threshold
            search).
        params: thresholds; :data:`TUNED` by default, :data:`ASTERISK_DEFAULTS` for the baseline.
        sample_rate: 16000 (the pipeline's rate) or 8000 Hz.

    Raises:
        ValueError: another sample rate, or inconsistent thresholds.
        onnxruntime.capi.onnxruntime_pybind11_state.NoSuchFile: ``vad_model_path`` is missing.
    """

    def __init__(
        self,
        vad_model_path: Path | Callable[[npt.NDArray[np.float32], int], npt.NDArray[np.float32]],
        params: AmdParams = TUNED,
        sample_rate: int = 16000,
    ) -> None:
        if sample_rate not in _RATES:
            raise ValueError(f"sample rate {sample_rate} Hz; expected one of {_RATES}")
        if params.vad_end_threshold > params.vad_threshold:
            raise ValueError("vad_end_threshold must not exceed vad_threshold")
        from pipecat.audio.vad.silero import SileroOnnxModel

        self.params = params
        self.sample_rate = sample_rate
        self._model: Callable[[npt.NDArray[np.float32], int], npt.NDArray[np.float32]]
        if isinstance(vad_model_path, Path | str):
            self._model = SileroOnnxModel(str(vad_model_path), force_onnx_cpu=True)  # type: ignore[no-untyped-call]
        else:
            self._model = vad_model_path
            if isinstance(vad_model_path, SileroOnnxModel):
                vad_model_path.reset_states()  # type: ignore[no-untyped-call]
        self._win = 512 if sample_rate == 16000 else 256  # 32 ms, Silero's window
        self._win_ms = self._win * 1000 / sample_rate
        self._buf = np.zeros(0, dtype=np.int16)
        self.beep_detector = BeepDetector(sample_rate, params)
        self._samples = 0
        self._windows = 0
        self._in_speech = False
        self._seg_ms = 0.0  # current speech segment (word) length
        self._silence_ms = 0.0  # silence since the last speech (or since the start)
        self._speech_ms = 0.0  # speech in counted words
        self._words = 0
        self._heard_speech = False
        self.result: AmdResult | None = None
        self.message_cue: MessageCue | None = None

    @property
    def elapsed_ms(self) -> int:
        """Audio fed so far (ms)."""
        return self._samples * 1000 // self.sample_rate

    @property
    def beep_at_ms(self) -> int | None:
        """Start (ms since the first sample) of the first beep heard, or None."""
        beeps = self.beep_detector.beeps
        return beeps[0].start_ms if beeps else None

    def feed(self, frame: bytes | npt.NDArray[np.int16]) -> AmdResult | None:
        """Feed the next frame of callee audio; returns the decision once made, else None.

        Keep feeding after a ``machine`` decision: :attr:`message_cue` is set when the message
        may start (after the beep, or the greeting's end, or the timeout).

        Args:
            frame: int16 samples at ``sample_rate`` (bytes: little-endian), any length.

        Raises:
            ValueError: not 16-bit PCM.
        """
        pcm = _pcm(frame)
        self._samples += len(pcm)
        for beep in self.beep_detector.feed(pcm):
            if self.result is None:
                self._decide(Decision.MACHINE, "beep", at_ms=beep.end_ms)
            if self.message_cue is None and self.result.decision is Decision.MACHINE:  # type: ignore[union-attr]
                at_ms = beep.end_ms + self.params.beep_guard_ms
                self.message_cue = MessageCue(at_ms=at_ms, cause="beep", beep=beep)
        self._buf = np.concatenate([self._buf, pcm])
        while len(self._buf) >= self._win:
            window, self._buf = self._buf[: self._win], self._buf[self._win :]
            self._vad_window(window)
        return self.result

    async def decide(self, frames: AsyncIterable[bytes]) -> AmdResult:
        """Feed ``frames`` until the first-stage decision; ``unknown`` if they end first."""
        async for frame in frames:
            if (result := self.feed(frame)) is not None:
                return result
        if self.result is None:
            self._decide(Decision.UNKNOWN, "audio_ended", at_ms=self.elapsed_ms)
        assert self.result is not None  # noqa: S101 - set just above
        return self.result

    async def wait_for_beep(self, frames: AsyncIterable[bytes]) -> MessageCue:
        """Second stage: feed ``frames`` until the message may start (see :class:`MessageCue`).

        Use after a ``machine`` decision. If ``frames`` end first the cue is ``timeout`` at
        the last sample.
        """
        if self.message_cue is not None:
            return self.message_cue
        async for frame in frames:
            self.feed(frame)
            if self.message_cue is not None:
                return self.message_cue
        self.message_cue = MessageCue(
            at_ms=self.elapsed_ms, cause="timeout", beep=self._first_beep()
        )
        return self.message_cue

    def give_up(self, cause: str) -> AmdResult:
        """End the first stage without more audio: ``unknown`` with ``cause``, unless decided.

        For a caller that stops feeding before a decision (the call ended, no audio reached
        the wall-clock deadline). Returns the decision (the earlier one, if there was one).
        """
        if self.result is None:
            self._decide(Decision.UNKNOWN, cause, at_ms=self.elapsed_ms)
        assert self.result is not None  # noqa: S101 - set just above
        return self.result

    def cue_now(self) -> MessageCue:
        """End the second stage without more audio: a ``timeout`` cue now, unless cued."""
        if self.message_cue is None:
            self.message_cue = MessageCue(
                at_ms=self.elapsed_ms, cause="timeout", beep=self._first_beep()
            )
        return self.message_cue

    def _first_beep(self) -> Beep | None:
        return self.beep_detector.beeps[0] if self.beep_detector.beeps else None

    def _decide(self, decision: Decision, cause: str, at_ms: int) -> None:
        self.result = AmdResult(
            decision=decision,
            decided_at_ms=at_ms,
            cause=cause,
            speech_ms=int(self._speech_ms + self._seg_ms),
            words=self._words,
        )

    def _vad_window(self, window: npt.NDArray[np.int16]) -> None:
        p = self.params
        prob = float(self._model(window.astype(np.float32) / 32768.0, self.sample_rate)[0][0])
        self._windows += 1
        now = int(self._windows * self._win_ms)
        threshold = p.vad_end_threshold if self._in_speech else p.vad_threshold
        if prob >= threshold:
            if not self._in_speech and self._silence_ms >= p.between_words_silence_ms:
                self._seg_ms = 0.0  # a new word (a shorter gap continues the last one)
            self._in_speech = True
            self._seg_ms += self._win_ms
            self._silence_ms = 0.0
        else:
            if self._in_speech:
                self._in_speech = False
            if self._seg_ms and self._silence_ms + self._win_ms >= p.between_words_silence_ms:
                self._end_word()
            self._silence_ms += self._win_ms
        if self.result is None:
            self._first_stage(now)
        if self.result is not None and self.result.decision is Decision.MACHINE:
            self._second_stage(now)

    def _end_word(self) -> None:
        if self._seg_ms >= self.params.min_word_ms:
            self._words += 1
            self._speech_ms += self._seg_ms
            self._heard_speech = True
        self._seg_ms = 0.0

    def _first_stage(self, now: int) -> None:
        p = self.params
        talking = self._speech_ms + self._seg_ms
        words = self._words + (1 if self._seg_ms >= p.min_word_ms else 0)
        if self._seg_ms >= p.max_word_ms:
            self._decide(Decision.MACHINE, "long_word", now)
        elif talking >= p.greeting_ms:
            self._decide(Decision.MACHINE, "long_greeting", now)
        elif words >= p.max_words:
            self._decide(Decision.MACHINE, "max_words", now)
        elif (
            self._heard_speech
            and self._silence_ms >= p.after_greeting_silence_ms
            and not self.beep_detector.tone_ms  # a short greeting's beep may be sounding
        ):
            self._decide(Decision.HUMAN, "after_greeting_silence", now)
        elif not self._heard_speech and not self._seg_ms and now >= p.initial_silence_ms:
            self._decide(Decision.UNKNOWN, "initial_silence", now)
        elif now >= p.total_analysis_ms:
            self._decide(Decision.UNKNOWN, "total_analysis", now)

    def _second_stage(self, now: int) -> None:
        p = self.params
        if self.message_cue is not None:
            return
        if self.beep_detector.tone_ms:  # a beep may be sounding: wait for its end
            if now < p.max_message_wait_ms:
                return
        if self._heard_speech and self._silence_ms >= p.greeting_end_silence_ms:
            self.message_cue = MessageCue(at_ms=now, cause="greeting_end", beep=None)
        elif now >= p.max_message_wait_ms:
            self.message_cue = MessageCue(at_ms=now, cause="timeout", beep=self._first_beep())
