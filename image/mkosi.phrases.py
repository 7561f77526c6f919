"""Render the agent's fixed phrases into the image's phrase cache (run by image/mkosi.finalize).

The agent synthesises every fixed phrase (AI disclosure, greeting, the workflows' prompts) before
it reports ready, and keeps them in a disk cache keyed by voice, speed and text
(``[models] phrase_cache``, /var/lib/appliance/phrases in the image's settings template). Doing it
here, at native speed on the build host with the image's own interpreter, models and settings
template, seeds that cache on the data partition (first-boot repart copies the image's /var), so
the box is ready without minutes of first-boot synthesis. The agent's own start-up code is used,
so the keys are exactly the ones it looks up; a site whose trunk.toml changes the clinic name gets
the changed phrases synthesised on its first start, as before.

Usage (inside the image): python mkosi.phrases.py /usr/share/appliance/appliance.toml
"""

from __future__ import annotations

import logging
import sys
import time

from appliance.app.server import ApplianceServer
from appliance.config import load_settings
from appliance.models.engines import load_models


def main(template: str) -> int:
    logging.basicConfig(level=logging.INFO, format="mkosi.phrases: %(message)s")
    started = time.monotonic()
    settings = load_settings(template)
    server = ApplianceServer(settings)
    server.models = load_models(settings.models)
    server.agent = server._load_agent(settings)
    server._warm()
    cache = settings.models.phrase_cache
    count = len(list(cache.glob("*.pcm"))) if cache is not None else 0
    logging.info("%d cached phrases in %s (%.0f s)", count, cache, time.monotonic() - started)
    return 0 if count else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
