"""Model engines loaded once per process and shared by all calls.

Each engine wraps one runtime and is safe to call from worker threads:

* :class:`WhisperEngine`: faster-whisper (CTranslate2) STT, 16 kHz 16-bit mono PCM in.
  Decoding follows the expected answer (:data:`SLOT_DECODING`: digit-only vocabulary for digit
  slots, a date vocabulary for dates, prompts for confirmations and names; docs/decisions/0011).
* :class:`LanguageIdEngine`: spoken-language ID with multilingual Whisper base, 16 kHz in; run by
  the STT on unsure free turns so a non-English caller can be transferred.
* :class:`LlamaEngine`: llama-cpp-python chat completion, streamed token by token. One llama.cpp
  context serialises generation, so calls take turns under a lock; the system prompt's KV
  prefix is reused across turns and calls because llama-cpp-python keeps the longest common
  token prefix of consecutive prompts (``Llama.generate``'s prefix match).
* :class:`KokoroEngine`: Kokoro-82M through kokoro-onnx, 24 kHz float32 out
  (model card: hexgrad/Kokoro-82M).
* :class:`EmbeddingEngine`: all-MiniLM-L6-v2 sentence embeddings through sentence-transformers
  on the CPU (384-d, L2-normalised; model card: sentence-transformers/all-MiniLM-L6-v2).

A missing or unreadable model file raises :class:`~appliance.errors.ModelError` naming the
file, before any call is accepted.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from appliance.config.settings import ModelSettings
from appliance.errors import ErrorCategory, LLMError, ModelError, STTError, TTSError
from appliance.text.languages import tts_language
from appliance.text.listening import Listening

_LOGGER = logging.getLogger(__name__)

#: Kokoro's output sample rate in Hz (model card).
KOKORO_SAMPLE_RATE = 24000


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise ModelError(
            "model_missing",
            f"{what} model not found: {path} (run ./build.sh setup to assemble the models)",
        )
    return path


@dataclass(frozen=True)
class Transcript:
    """An STT result: text plus a confidence in [0, 1] (exp of the mean token log-prob).

    Attributes:
        text: The transcript.
        confidence: exp of the mean token log-probability of the kept segments, in [0, 1].
        audio_s: Length of the input audio in seconds.
        elapsed_s: Wall-clock decoding time in seconds.
        language: ISO 639-1 code of the spoken language when it was identified (a multilingual
            Whisper model or a :class:`LanguageIdEngine` ran), else ``None``. The English-only
            STT model cannot tell languages apart, so it never sets this by itself.
        language_probability: Whisper's probability for ``language`` in [0, 1] (0.0 when
            ``language`` is ``None``).
    """

    text: str
    confidence: float
    audio_s: float
    elapsed_s: float
    language: str | None = None
    language_probability: float = 0.0


Vocabulary = Literal["any", "digits", "date"]

#: Digits and spaces: what a digit-slot token may contain. Punctuation is left out: with
#: ``.`` or ``-`` allowed, tiny.en answered unclear digits with "..." or "- - -" (measured on
#: FSDD, docs/decisions/0011) instead of its best digit.
_DIGIT_TOKEN = re.compile(r"[0-9 ]+")
_MONTHS = (
    "January February March April May June July August September October November December"
).split()
_ORDINAL_SUFFIXES = ("st", "nd", "rd", "th")


@dataclass(frozen=True)
class DecodeOptions:
    """How one utterance is decoded (chosen per :class:`~appliance.text.listening.Listening`).

    Attributes:
        vocabulary: ``any`` (Whisper's default), ``digits`` (only tokens made of digits and
            spaces) or ``date`` (those plus the month names and ordinal suffixes).
        initial_prompt: Text given to Whisper as the previous context, or ``None``.
        hotwords: faster-whisper ``hotwords`` (prepended as context when no prefix), or ``None``.
        max_new_tokens: Cap on generated tokens per 30 s window (``None``: Whisper's 224). A
            constrained vocabulary can loop on one digit until the cap; the cap bounds the cost.
    """

    vocabulary: Vocabulary = "any"
    initial_prompt: str | None = None
    hotwords: str | None = None
    max_new_tokens: int | None = None


#: Decoding per expected answer, chosen by measurement (docs/decisions/0011): FSDD digits and
#: stitched digit strings for ``digits``; espeak-ng dates, confirmations and names otherwise.
#: Kinds without an entry decode like ``listening=None``.
SLOT_DECODING: dict[str, DecodeOptions] = {
    # No prompt: a digit prompt ("1 2 3 ...") or "My number is" made tiny.en repeat or count
    # digits (FSDD, 0011). The token cap comes from digit_token_cap.
    "digits": DecodeOptions(vocabulary="digits"),
    # Every date variant was poor on espeak-ng dates (6-9 of 24 fully right, within noise of
    # each other); the date vocabulary keeps the output to numbers and month names (no
    # hallucinated words for the slot parser) and was the fastest. Revisit with recorded dates.
    "date": DecodeOptions(vocabulary="date", max_new_tokens=40),
    # No prompt for confirmations and names: on 48 espeak-ng yes/no answers (4 voices) no
    # prompt, "Is that correct? Yes, that's right." and a neutral "Is that right? Yes or no?"
    # all scored 41/48, and the yes-prompt turned a "Not quite." into "That's right." (a no
    # heard as yes confirms a wrong value). The name prompt made Whisper drop "my name is"
    # and lowered its confidence, so names were read back more often (0011).
}


def digit_token_cap(audio_s: float, digits_max: int = 0) -> int:
    """Most tokens a digit-only decode of ``audio_s`` seconds of speech may generate.

    A spoken digit lasts at least about 0.25 s (FSDD's shortest clips; fast read-out digit
    strings run at 3-4 digits per second) and takes at most two tokens (" 5" or "5" plus a
    separator), so ``8 * audio_s`` tokens hold any real answer with room to spare; nor can an
    answer hold more than ``digits_max`` digits (when the slot says so). A decoder looping on
    one digit (it cannot emit words, so it can miss its end) then stops early instead of
    running to Whisper's 224 tokens.
    """
    cap = max(8, int(8 * audio_s) + 4)
    return min(cap, 2 * digits_max + 4) if digits_max > 0 else cap


#: Run language ID on a free turn whose English transcript's confidence is below this. Measured
#: (docs/decisions/0011): tiny.en gave espeak-ng English sentences >= 0.45 and Spanish <= 0.38.
LANGUAGE_CHECK_BELOW = 0.42
#: Shorter turns ("sí", "no") carry too little speech to identify the language reliably.
LANGUAGE_CHECK_MIN_AUDIO_S = 1.0


class WhisperEngine:
    """faster-whisper speech-to-text.

    Args:
        model_dir: CTranslate2 Whisper model directory (config.json, model.bin, ...).
        threads: CPU threads for CTranslate2.
        beam_size: Beam width (5, faster-whisper's default; on 2 CPU cores it measured no
            slower than greedy for turn-sized segments).

    Raises:
        ModelError: The model directory is missing or fails to load.
    """

    sample_rate = 16000

    def __init__(
        self,
        model_dir: Path,
        threads: int = 2,
        beam_size: int = 5,
        language_id: LanguageIdEngine | None = None,
    ) -> None:
        _require(model_dir / "model.bin", "STT")
        from faster_whisper import WhisperModel

        try:
            self._model = WhisperModel(
                str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads
            )
        except Exception as exc:
            raise ModelError("stt_load_failed", f"{model_dir}: {type(exc).__name__}") from exc
        self.model_dir = model_dir
        self.language_id = language_id
        self._beam = beam_size
        self._lock = threading.Lock()
        self._suppress: dict[str, list[int]] = {}
        self.multilingual = bool(self._model.model.is_multilingual)

    def suppress_tokens(self, vocabulary: Vocabulary) -> list[int] | None:
        """The token ids to suppress for ``vocabulary`` (``None`` for ``any``), computed once.

        Every id below end-of-text whose decoded text is not allowed is suppressed: for
        ``digits`` a token is allowed when it is made only of digits and spaces; for
        ``date`` the tokens of the month names (with and without a leading space) and the
        ordinal suffixes are allowed too.
        """
        if vocabulary == "any":
            return None
        cached = self._suppress.get(vocabulary)
        if cached is not None:
            return cached
        tok = self._model.hf_tokenizer
        eot = tok.token_to_id("<|endoftext|>")
        allowed: set[int] = set()
        if vocabulary == "date":
            for word in (*_MONTHS, *_ORDINAL_SUFFIXES):
                for form in (word, " " + word, word.lower(), " " + word.lower()):
                    allowed.update(tok.encode(form, add_special_tokens=False).ids)
        suppress = [
            i
            for i in range(eot)
            if i not in allowed and not _DIGIT_TOKEN.fullmatch(tok.decode([i]))
        ]
        self._suppress[vocabulary] = suppress
        return suppress

    def transcribe(self, pcm16: bytes, listening: Listening | None = None) -> Transcript:
        """Transcribe 16 kHz 16-bit mono PCM (blocking; call from a worker thread).

        Args:
            pcm16: 16 kHz 16-bit little-endian mono PCM.
            listening: What the caller is expected to say. ``None`` (or a kind without an
                entry in :data:`SLOT_DECODING`) decodes without constraints. ``digits`` and
                ``date`` decode with the slot's vocabulary only (digit tokens; digits, months
                and ordinals) and a token cap (:func:`digit_token_cap`). Words cannot come
                through there ("operator" becomes digits); the dialogue's failed-answer path
                (keypad offer, then a person) covers such a caller. Decoding freely first and
                keeping the surer decode was tried and lost real digits ("oh nine" from FSDD
                heard as "You're in.", which Whisper rated surer).

        When a :class:`LanguageIdEngine` is attached and a free turn (``None``, ``free`` or
        ``message``) of at least :data:`LANGUAGE_CHECK_MIN_AUDIO_S` transcribes with a
        confidence below :data:`LANGUAGE_CHECK_BELOW` (English-only Whisper is unsure of
        non-English speech), the language is identified and returned in
        :attr:`Transcript.language`; otherwise ``language`` stays ``None``.

        Raises:
            STTError: The runtime failed.
        """
        options = SLOT_DECODING.get(listening.kind) if listening is not None else None
        if options is not None and options.vocabulary != "any":
            digits_max = listening.digits_max if listening and listening.kind == "digits" else 0
            cap = digit_token_cap(len(pcm16) / 2 / 16000, digits_max)
            if options.max_new_tokens:
                cap = min(cap, options.max_new_tokens)
            options = replace(options, max_new_tokens=cap)
        result = self.decode(pcm16, options or DecodeOptions())
        free = listening is None or listening.kind in ("free", "message")
        if (
            self.language_id is not None
            and free
            and result.confidence < LANGUAGE_CHECK_BELOW
            and result.audio_s >= LANGUAGE_CHECK_MIN_AUDIO_S
        ):
            t0 = time.perf_counter()
            lang, prob = self.language_id.detect(pcm16, self.language_id.candidates)
            result = replace(
                result,
                language=lang,
                language_probability=prob,
                elapsed_s=result.elapsed_s + time.perf_counter() - t0,
            )
        return result

    def detect_language(self, pcm16: bytes) -> tuple[str, float]:
        """Spoken language of 16 kHz 16-bit mono PCM: ``(ISO 639-1 code, probability)``.

        Uses the attached :class:`LanguageIdEngine` (Whisper base). Blocking, about 1 s on
        2 CPU cores whatever the length (one encoder pass over a 30 s window).

        Raises:
            ModelError: No language-ID model is attached (``lid_unavailable``).
            STTError: The runtime failed.
        """
        if self.language_id is None:
            raise ModelError("lid_unavailable", "no language-ID model loaded (stt/whisper-base)")
        return self.language_id.detect(pcm16, self.language_id.candidates)

    def decode(self, pcm16: bytes, options: DecodeOptions) -> Transcript:
        """Transcribe 16 kHz 16-bit mono PCM with explicit :class:`DecodeOptions` (blocking).

        Raises:
            STTError: The runtime failed.
        """
        audio = np.frombuffer(pcm16, dtype=np.int16).astype(np.float32) / 32768.0
        suppress = self.suppress_tokens(options.vocabulary)
        extra: dict[str, Any] = {}
        if suppress is not None:
            extra["suppress_tokens"] = suppress
            # A constrained decode has a low log-probability by construction, which would set off
            # faster-whisper's temperature fallback (up to five more decodes at 0.2 ... 1.0,
            # seconds on 2 cores, and random output): decode once, at temperature 0.
            extra["temperature"] = 0.0
        if options.initial_prompt:
            extra["initial_prompt"] = options.initial_prompt
        if options.hotwords:
            extra["hotwords"] = options.hotwords
        if options.max_new_tokens:
            extra["max_new_tokens"] = options.max_new_tokens
        t0 = time.perf_counter()
        try:
            with self._lock:
                segments, info = self._model.transcribe(
                    audio,
                    language="en",
                    beam_size=self._beam,
                    condition_on_previous_text=False,
                    vad_filter=False,
                    **extra,
                )
                # Drop segments Whisper itself rates as probably not speech (noise
                # hallucinations such as "Thank you."); 0.8 keeps short words like digits.
                segs = [s for s in segments if s.no_speech_prob < 0.8]
        except Exception as exc:
            raise STTError("stt_failed", type(exc).__name__, ErrorCategory.TRANSIENT) from exc
        text = " ".join(s.text.strip() for s in segs).strip()
        logprob = float(np.mean([s.avg_logprob for s in segs])) if segs else -10.0
        return Transcript(
            text=text,
            confidence=math.exp(min(0.0, logprob)),
            audio_s=len(audio) / self.sample_rate,
            elapsed_s=time.perf_counter() - t0,
        )


#: The languages language ID chooses among by default: English plus common US clinic languages.
DEFAULT_LID_CANDIDATES: tuple[str, ...] = ("en", "es", "zh", "vi", "fr", "ar", "ru", "ko", "pt")


class LanguageIdEngine:
    """Spoken-language identification with a multilingual Whisper model (faster-whisper).

    Whisper's language token probabilities after one encoder pass over the first 30 s
    (``WhisperModel.detect_language``); the English-only STT model cannot do this. The default
    store carries Whisper base (multilingual, 99 languages) for it.

    Args:
        model_dir: A multilingual CTranslate2 Whisper model directory.
        threads: CPU threads for CTranslate2.

    Raises:
        ModelError: The directory is missing, fails to load, or holds an English-only model.
    """

    sample_rate = 16000

    def __init__(self, model_dir: Path, threads: int = 2) -> None:
        _require(model_dir / "model.bin", "language-id")
        from faster_whisper import WhisperModel

        try:
            self._model = WhisperModel(
                str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads
            )
        except Exception as exc:
            raise ModelError("lid_load_failed", f"{model_dir}: {type(exc).__name__}") from exc
        if not self._model.model.is_multilingual:
            raise ModelError("lid_not_multilingual", f"{model_dir} is an English-only model")
        self._lock = threading.Lock()
        #: Languages :meth:`WhisperEngine.transcribe` chooses among (English and the languages
        #: a clinic commonly transfers to); ``None`` for all 99.
        self.candidates: tuple[str, ...] | None = DEFAULT_LID_CANDIDATES

    def detect(self, pcm16: bytes, candidates: tuple[str, ...] | None = None) -> tuple[str, float]:
        """The most likely language of 16 kHz 16-bit mono PCM and its probability (blocking).

        Args:
            pcm16: 16 kHz 16-bit little-endian mono PCM; the first 30 s are used.
            candidates: ISO 639-1 codes to choose among (e.g. the languages the clinic can
                transfer to plus ``"en"``); their probabilities are renormalised to sum to 1.
                ``None``: all of Whisper's 99 languages.

        Returns:
            ``(code, probability)``: an ISO 639-1 code such as ``"en"`` or ``"es"`` and its
            probability in [0, 1].

        Raises:
            STTError: The runtime failed.
        """
        audio = np.frombuffer(pcm16, dtype=np.int16).astype(np.float32) / 32768.0
        try:
            with self._lock:
                lang, prob, ranked = self._model.detect_language(audio)
        except Exception as exc:
            raise STTError("lid_failed", type(exc).__name__, ErrorCategory.TRANSIENT) from exc
        if not candidates:
            return str(lang), float(prob)
        probs = {code: float(p) for code, p in ranked if code in candidates}
        total = sum(probs.values())
        if total <= 0.0:
            return candidates[0], 0.0
        best = max(probs, key=lambda code: probs[code])
        return best, probs[best] / total


class LlamaEngine:
    """llama-cpp-python chat model (GGUF), streaming.

    Args:
        model_path: GGUF file.
        n_ctx: Context length in tokens.
        threads: CPU threads.

    Raises:
        ModelError: The file is missing or not a loadable GGUF.
    """

    def __init__(self, model_path: Path, n_ctx: int = 2048, threads: int = 2) -> None:
        _require(model_path, "LLM")
        from llama_cpp import Llama

        try:
            self._llm = Llama(
                model_path=str(model_path),
                n_ctx=n_ctx,
                n_threads=threads,
                n_batch=256,
                verbose=False,
            )
        except Exception as exc:
            raise ModelError("llm_load_failed", f"{model_path}: {type(exc).__name__}") from exc
        self._lock = threading.Lock()

    def warm_messages(self, messages: list[dict[str, str]]) -> None:
        """Evaluate a prompt prefix once so its KV cache is ready before the first call."""
        for _ in self.stream(messages, max_tokens=1):
            pass

    def stream(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float = 0.2,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Iterator[str]:
        """Yield reply text pieces for an OpenAI-style message list (blocking iterator).

        Generation stops early when ``cancelled()`` turns true (barge-in), releasing the model
        for the next turn within one token.

        Raises:
            LLMError: The runtime failed.
        """
        with self._lock:
            try:
                chunks = self._llm.create_chat_completion(
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=max_tokens,
                    temperature=temperature,
                    top_p=0.9,
                    repeat_penalty=1.15,
                    stream=True,
                )
                for chunk in chunks:
                    if cancelled():
                        break
                    delta: Any = chunk["choices"][0]["delta"]  # type: ignore[index]
                    piece = delta.get("content")
                    if piece:
                        yield piece
            except Exception as exc:
                raise LLMError("llm_failed", type(exc).__name__, ErrorCategory.TRANSIENT) from exc

    def complete_json(
        self, messages: list[dict[str, str]], schema: dict[str, Any], *, max_tokens: int = 64
    ) -> dict[str, Any]:
        """A reply constrained to ``schema`` (llama.cpp grammar from a JSON schema), parsed.

        llama-cpp-python turns ``response_format={"type": "json_object", "schema": ...}`` into a
        GBNF grammar, so the model can only emit JSON valid against ``schema`` (enums included).

        Raises:
            LLMError: The runtime failed or the output did not parse.
        """
        import json

        with self._lock:
            try:
                out = self._llm.create_chat_completion(
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=max_tokens,
                    temperature=0.0,
                    response_format={"type": "json_object", "schema": schema},
                )
                text = out["choices"][0]["message"]["content"] or ""  # type: ignore[index]
                return dict(json.loads(text))
            except Exception as exc:
                raise LLMError("llm_failed", type(exc).__name__, ErrorCategory.TRANSIENT) from exc


class KokoroEngine:
    """Kokoro-82M ONNX text-to-speech via kokoro-onnx.

    Args:
        model_path: Kokoro ONNX file (int8 or fp32).
        voices_path: Voices file (``.npz`` or ``.bin``) containing ``voice``.
        voice: Voice id, e.g. ``"jm_kumo"``.
        threads: ONNX Runtime intra-op threads.

    Raises:
        ModelError: A file is missing, or the voice is not in the voices file.
    """

    sample_rate = KOKORO_SAMPLE_RATE

    def __init__(self, model_path: Path, voices_path: Path, voice: str, threads: int = 2) -> None:
        _require(model_path, "TTS")
        _require(voices_path, "TTS voices")
        import onnxruntime as ort
        from kokoro_onnx import Kokoro

        try:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            session = ort.InferenceSession(
                str(model_path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
            self._kokoro = Kokoro.from_session(session, str(voices_path))
        except Exception as exc:
            raise ModelError("tts_load_failed", f"{model_path}: {type(exc).__name__}") from exc
        if voice not in self._kokoro.get_voices():
            raise ModelError("tts_voice_missing", f"voice {voice!r} not in {voices_path}")
        self.voice = voice

    def synthesize(self, text: str, speed: float = 1.0) -> np.ndarray:
        """Synthesise text to 24 kHz float32 mono samples (blocking).

        English, except the fixed hold sentences in other languages
        (:func:`appliance.text.languages.tts_language` picks their espeak-ng language).

        Raises:
            TTSError: The runtime failed.
        """
        lang = tts_language(text)
        try:
            samples, _ = self._kokoro.create(text, voice=self.voice, speed=speed, lang=lang)
        except Exception as exc:
            raise TTSError("tts_failed", type(exc).__name__, ErrorCategory.TRANSIENT) from exc
        return np.asarray(samples, dtype=np.float32)


#: Embedding width of all-MiniLM-L6-v2 (model card).
EMBEDDING_DIM = 384


class EmbeddingEngine:
    """Sentence embeddings for intent matching and knowledge-base retrieval.

    Args:
        model_dir: A sentence-transformers model directory (``modules.json`` and weights).
        threads: Torch intra-op threads.

    Raises:
        ModelError: The directory is missing or the model cannot be loaded.
    """

    def __init__(self, model_dir: Path, threads: int = 2) -> None:
        import os

        # Never reach for a model hub: the store is the only source of weights.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        _require(model_dir / "modules.json", "embedding")
        try:
            import torch
            from sentence_transformers import SentenceTransformer

            torch.set_num_threads(max(1, threads))
            self._model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any load failure is a model error
            raise ModelError("embedding_load_failed", f"{model_dir}: {type(exc).__name__}") from exc
        self._lock = threading.Lock()
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str], *, remember: bool | None = None) -> np.ndarray:
        """Embed ``texts``: float32 array of shape ``(len(texts), 384)``, rows L2-normalised.

        Only fixed texts are memoised (workflow examples and KB entries, embedded once per
        load). A caller's words are embedded one at a time and are never kept: the memo is
        shared by every call of the process and would otherwise hold what callers said long
        after their calls ended.

        Args:
            texts: The texts to embed.
            remember: Memoise these texts. ``None`` (the default): a batch of two or more
                (an index being built) is memoised, a single text (a query, the caller's
                words) is not. Memoised texts are reused either way.
        """
        if remember is None:
            remember = len(texts) > 1
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        fresh: dict[str, np.ndarray] = {}
        if missing:
            with self._lock:
                vectors = self._model.encode(
                    missing, normalize_embeddings=True, convert_to_numpy=True, batch_size=32
                )
            for text, vec in zip(missing, vectors, strict=True):
                fresh[text] = vec.astype(np.float32)
                if remember and len(self._cache) < 20000:
                    self._cache[text] = fresh[text]
        out = np.stack([self._cache[t] if t in self._cache else fresh[t] for t in texts])
        fresh.clear()
        return out

    @property
    def memo_size(self) -> int:
        """How many texts are memoised (fixed texts only; see :meth:`encode`)."""
        return len(self._cache)

    def remembers(self, text: str) -> bool:
        """Whether ``text``'s embedding is memoised."""
        return text in self._cache


@dataclass
class ModelSet:
    """The engines shared by every call of one process."""

    stt: WhisperEngine
    llm: LlamaEngine
    tts: KokoroEngine
    vad_path: Path
    turn_path: Path
    embedder: EmbeddingEngine | None = None
    lid: LanguageIdEngine | None = None


#: Store path of the multilingual Whisper model used for language ID (models/manifest.toml).
LID_MODEL = "stt/whisper-base"


def load_models(settings: ModelSettings) -> ModelSet:
    """Load all default engines, checking every file first.

    Raises:
        ModelError: Naming the first missing or unloadable file.
    """
    vad = _require(settings.path(settings.vad), "VAD")
    turn = _require(settings.path(settings.turn), "turn")
    _require(settings.path(settings.stt) / "model.bin", "STT")
    _require(settings.path(settings.llm), "LLM")
    _require(settings.path(settings.tts), "TTS")
    _require(settings.path(settings.tts_voices), "TTS voices")
    t0 = time.perf_counter()
    lid_dir = settings.path(LID_MODEL)
    lid: LanguageIdEngine | None = None
    if (lid_dir / "model.bin").exists():
        lid = LanguageIdEngine(lid_dir, threads=settings.threads)
    else:
        # A store assembled before issue 11 lacks it: English-only, as before.
        _LOGGER.warning("no language-ID model at %s; language ID is off", lid_dir)
    stt = WhisperEngine(settings.path(settings.stt), threads=settings.threads, language_id=lid)
    llm = LlamaEngine(settings.path(settings.llm), settings.llm_context, settings.threads)
    tts = KokoroEngine(
        settings.path(settings.tts),
        settings.path(settings.tts_voices),
        settings.tts_voice,
        settings.threads,
    )
    embedder = EmbeddingEngine(settings.path(settings.embedding), settings.threads)
    _LOGGER.info("models loaded in %.1f s", time.perf_counter() - t0)
    return ModelSet(
        stt=stt, llm=llm, tts=tts, vad_path=vad, turn_path=turn, embedder=embedder, lid=lid
    )
