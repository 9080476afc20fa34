"""`kiln/instantid-xl`: SDXL + the InstantID adapter and keypoint ControlNet (filled in by the model work)."""
