"""What a create passes through: validation, image staging, idempotency, batches in."""
