"""Error hierarchy: every failure carries a stage, a machine code and a category.

Follows the practice of ``home-assistant/core: components/assist_pipeline/error.py``: errors
say which stage failed and whether retrying can help, and keep the original cause through
``raise ... from exc``. Messages never contain caller content (transcripts, digits, numbers).
"""

from __future__ import annotations

import enum


class ErrorCategory(enum.Enum):
    """Whether an error may go away on retry."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"


class ApplianceError(Exception):
    """Base class for all appliance errors.

    Args:
        code: Short machine-readable code, e.g. ``"config_invalid"``.
        message: Human-readable explanation without PHI.
        category: Whether a retry may succeed.
    """

    stage = "appliance"

    def __init__(
        self, code: str, message: str, category: ErrorCategory = ErrorCategory.PERMANENT
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.category = category


class ConfigError(ApplianceError):
    """The configuration file is missing, unreadable or invalid."""

    stage = "config"


class ModelError(ApplianceError):
    """A model file is missing, corrupt or failed to load."""

    stage = "models"


class MediaError(ApplianceError):
    """SIP/RTP stack failure (pjsua2)."""

    stage = "media"


class STTError(ApplianceError):
    """Speech-to-text failure."""

    stage = "stt"


class LLMError(ApplianceError):
    """Language-model failure."""

    stage = "llm"


class TTSError(ApplianceError):
    """Text-to-speech failure."""

    stage = "tts"
