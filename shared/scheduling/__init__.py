"""Queues: names and priorities, counters, Celery messages, the batch dispatcher."""
