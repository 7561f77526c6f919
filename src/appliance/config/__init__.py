"""Typed settings for the appliance, loaded from TOML (see :mod:`appliance.config.settings`)."""

from appliance.config.settings import (
    AgentSettings,
    ApplianceSettings,
    ClinicSettings,
    ModelSettings,
    SipSettings,
    load_settings,
)

__all__ = [
    "AgentSettings",
    "ApplianceSettings",
    "ClinicSettings",
    "ModelSettings",
    "SipSettings",
    "load_settings",
]
