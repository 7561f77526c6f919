"""Typed settings for the appliance, loaded from TOML (see :mod:`appliance.config.settings`)."""

from appliance.config.settings import (
    AgentSettings,
    ApplianceSettings,
    ClinicSettings,
    ModelSettings,
    SipSettings,
    dropin_dir,
    load_settings,
    settings_files,
)

__all__ = [
    "AgentSettings",
    "ApplianceSettings",
    "ClinicSettings",
    "ModelSettings",
    "SipSettings",
    "dropin_dir",
    "load_settings",
    "settings_files",
]
