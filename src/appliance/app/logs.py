"""Logging set-up. Logs are a data-protection surface: static messages, no caller content.

pipecat logs through loguru and writes some content (transcripts, TTS text) at DEBUG, so its
loguru output is limited to WARNING and above and routed into the stdlib logging handlers.
"""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str = "INFO") -> None:
    """Configure stdlib logging and cap pipecat's loguru output at WARNING."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    try:
        from loguru import logger
    except ImportError:  # pragma: no cover - loguru comes with pipecat
        return
    logger.remove()
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    logging.getLogger("phonemizer").setLevel(logging.ERROR)
    pipecat_log = logging.getLogger("pipecat")
    if os.environ.get("APPLIANCE_UNSAFE_PIPECAT_DEBUG") == "1":
        # Developer aid only: pipecat's own messages, which may quote caller content.
        logger.add(sys.stderr, level="DEBUG")
        return

    def sink(message: object) -> None:
        record = message.record  # type: ignore[attr-defined]
        # Only the level and the static location go out: pipecat messages may quote content.
        pipecat_log.log(
            logging.WARNING if record["level"].no < 40 else logging.ERROR,
            "%s:%s %s",
            record["name"],
            record["function"],
            record["level"].name,
        )

    logger.add(sink, level="WARNING")
