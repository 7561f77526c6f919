"""On-prem voice AI agent appliance."""
