"""Tokens, server secrets, signed URLs and the SSRF guard."""
