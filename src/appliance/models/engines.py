"""Model engines loaded once per process and shared by all calls.

Each engine wraps one runtime and is safe to call from worker threads:

* :class:`WhisperEngine`: faster-whisper (CTranslate2) STT, 16 kHz 16-bit mono PCM in.
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
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.config.settings import ModelSettings
from appliance.errors import ErrorCategory, LLMError, ModelError, STTError, TTSError

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
    """An STT result: text plus a confidence in [0, 1] (exp of the mean token log-prob)."""

    text: str
    confidence: float
    audio_s: float
    elapsed_s: float


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

    def __init__(self, model_dir: Path, threads: int = 2, beam_size: int = 5) -> None:
        _require(model_dir / "model.bin", "STT")
        from faster_whisper import WhisperModel

        try:
            self._model = WhisperModel(
                str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads
            )
        except Exception as exc:
            raise ModelError("stt_load_failed", f"{model_dir}: {type(exc).__name__}") from exc
        self._beam = beam_size
        self._lock = threading.Lock()

    def transcribe(self, pcm16: bytes) -> Transcript:
        """Transcribe 16 kHz 16-bit mono PCM (blocking; call from a worker thread).

        Raises:
            STTError: The runtime failed.
        """
        audio = np.frombuffer(pcm16, dtype=np.int16).astype(np.float32) / 32768.0
        t0 = time.perf_counter()
        try:
            with self._lock:
                segments, _ = self._model.transcribe(
                    audio,
                    language="en",
                    beam_size=self._beam,
                    condition_on_previous_text=False,
                    vad_filter=False,
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
        """Synthesise English text to 24 kHz float32 mono samples (blocking).

        Raises:
            TTSError: The runtime failed.
        """
        try:
            samples, _ = self._kokoro.create(text, voice=self.voice, speed=speed, lang="en-us")
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

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts``: float32 array of shape ``(len(texts), 384)``, rows L2-normalised.

        Results are memoised per text (workflow examples and KB entries are embedded once).
        """
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            with self._lock:
                vectors = self._model.encode(
                    missing, normalize_embeddings=True, convert_to_numpy=True, batch_size=32
                )
            for text, vec in zip(missing, vectors, strict=True):
                if len(self._cache) < 20000:
                    self._cache[text] = vec.astype(np.float32)
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        return np.stack(
            [self._cache[t] if t in self._cache else self._encode_one(t) for t in texts]
        )

    def _encode_one(self, text: str) -> np.ndarray:
        with self._lock:
            vec = self._model.encode([text], normalize_embeddings=True, convert_to_numpy=True)
        row: np.ndarray = vec[0]  # numpy types indexing an array of unknown shape as Any
        return row.astype(np.float32)


@dataclass
class ModelSet:
    """The engines shared by every call of one process."""

    stt: WhisperEngine
    llm: LlamaEngine
    tts: KokoroEngine
    vad_path: Path
    turn_path: Path
    embedder: EmbeddingEngine | None = None


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
    stt = WhisperEngine(settings.path(settings.stt), threads=settings.threads)
    llm = LlamaEngine(settings.path(settings.llm), settings.llm_context, settings.threads)
    tts = KokoroEngine(
        settings.path(settings.tts),
        settings.path(settings.tts_voices),
        settings.tts_voice,
        settings.threads,
    )
    embedder = EmbeddingEngine(settings.path(settings.embedding), settings.threads)
    _LOGGER.info("models loaded in %.1f s", time.perf_counter() - t0)
    return ModelSet(stt=stt, llm=llm, tts=tts, vad_path=vad, turn_path=turn, embedder=embedder)
