"""Media plane: pjsua2 SIP user agent, RTP audio bridge and DTMF (no pipecat imports here)."""
