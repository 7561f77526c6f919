"""Pre-rendered audio for fixed phrases, keyed as pipecat's TTS will ask for it.

The "hybrid pre-recorded + TTS" technique: fixed utterances (disclosure, greeting, workflow
prompts, knowledge-base answers) are synthesised once per voice, then play with no TTS latency,
and still play if the TTS later fails.

A lookup only hits if the key is exactly the text the TTS service receives. Streamed text
(``LLMTextFrame``) reaches :meth:`TTSService.run_tts` one sentence at a time, cut by pipecat's
sentence aggregator (:class:`~pipecat.utils.text.simple_text_aggregator.SimpleTextAggregator`,
which asks :func:`~pipecat.utils.string.match_endofsentence` where the first sentence ends). A
:class:`TTSSpeakFrame` reaches it whole. So the cache keys each phrase by the sentences
:func:`tts_sentences` finds with that same function ("Dr. Smith", "St. Mary's" and "$9.50"
stay inside their sentence), and, for phrases spoken with one ``TTSSpeakFrame``, by the whole
phrase as well.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
from pipecat.utils.string import match_endofsentence

from appliance.models.engines import KokoroEngine

_LOGGER = logging.getLogger(__name__)


def tts_sentences(text: str, language: str = "en") -> list[str]:
    """Split ``text`` into the sentences pipecat's TTS sentence aggregation produces.

    Repeatedly takes the first sentence :func:`pipecat.utils.string.match_endofsentence`
    finds (sentencex rules: abbreviations, initials and decimals do not end a sentence); text
    after the last sentence end is the final sentence, as the aggregator's flush returns it.

    Args:
        text: The phrase.
        language: Sentence-rule language (pipecat resolves ``en-us`` to ``en``).

    Returns:
        The stripped, non-empty sentences, in order.
    """
    sentences: list[str] = []
    rest = text
    while rest.strip():
        end = match_endofsentence(rest, language=language)
        if end <= 0:
            sentences.append(rest.strip())
            break
        if rest[:end].strip():
            sentences.append(rest[:end].strip())
        rest = rest[end:]
    return sentences


class PhraseCache:
    """Pre-rendered audio for fixed phrases; values are 24 kHz 16-bit mono PCM.

    Keys are the stripped text of each sentence of a phrase (as :func:`tts_sentences` splits
    it) and, for single-sentence phrases or with ``whole``, of the whole phrase.

    With ``directory`` set, rendered audio is also kept on disk (one file per key, named by
    the SHA-256 of voice, speed and text), so a restart or a second process renders nothing.
    Fixed phrases hold no caller content.

    Args:
        engine: The Kokoro engine (24 kHz float32 output).
        speed: Speaking rate multiplier (part of the disk key).
        directory: Disk cache directory (created if missing), or ``None`` for memory only.
        voice: Voice id (part of the disk key).

    Raises:
        OSError: ``directory`` cannot be created.
    """

    def __init__(
        self,
        engine: KokoroEngine,
        speed: float,
        directory: Path | None = None,
        voice: str = "",
    ) -> None:
        self._engine = engine
        self._speed = speed
        self._dir = directory
        self._voice = voice
        self._audio: dict[str, bytes] = {}
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def _file(self, key: str) -> Path | None:
        if self._dir is None:
            return None
        digest = hashlib.sha256(f"{self._voice}\0{self._speed}\0{key}".encode()).hexdigest()
        return self._dir / f"{digest}.pcm"

    def render(self, phrases: list[str], *, whole: bool = False) -> int:
        """Synthesise the keys of ``phrases`` not yet cached; returns how many were synthesised.

        The TTS service looks streamed text up sentence by sentence; ``whole`` also caches
        each phrase as a unit, for text spoken with a single ``TTSSpeakFrame`` (the disclosure,
        replies that end in a transfer or hang-up). Keys found on disk are loaded, not counted.

        Raises:
            appliance.errors.TTSError: Synthesis failed.
        """
        done = 0
        for phrase in phrases:
            keys = tts_sentences(phrase)
            if whole or len(keys) <= 1:
                keys = [phrase.strip(), *keys]
            for key in dict.fromkeys(keys):
                if not key or key in self._audio:
                    continue
                path = self._file(key)
                if path is not None and path.exists():
                    self._audio[key] = path.read_bytes()
                    continue
                samples = self._engine.synthesize(key, self._speed)
                audio = (np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes()
                self._audio[key] = audio
                done += 1
                if path is not None:
                    tmp = path.with_suffix(f".{os.getpid()}.tmp")
                    try:
                        tmp.write_bytes(audio)
                        tmp.replace(path)
                    except OSError:
                        _LOGGER.warning("phrase cache not writable; keeping audio in memory")
        return done

    def get(self, text: str) -> bytes | None:
        """Cached 24 kHz 16-bit mono PCM for ``text`` (compared stripped), or ``None``."""
        return self._audio.get(text.strip())
