"""Webhooks: signing, the outbox, delivery and each tenant's secret."""
