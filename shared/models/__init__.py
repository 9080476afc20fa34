"""Model metadata and input schemas, importable without torch."""
