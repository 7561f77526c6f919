"""Agent plane on pipecat-ai: the pjsua2 transport, local model services, call pipeline."""
