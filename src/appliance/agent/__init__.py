"""Conversation logic: templated answers for common clinic questions, LLM fallback."""
