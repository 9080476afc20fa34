"""The model's random-weight builders for the tiny and random-full profiles."""
