"""Audio plane: the PCM bridge between the SIP media port and the pipeline (no wire codecs)."""
