"""kombu's Redis transports (``redis://`` and ``sentinel://``) with one fix, so that a Celery worker
outlives its broker connection being cut while it holds messages: a Sentinel failover, a Redis restart.

The bug (kombu 5.7.0; the read it is about came with celery/kombu#1733, the same ``AttributeError`` at a
later close is celery/kombu#582): a channel's ``close()`` first reads the reply of a ``BRPOP`` still in
flight, and catches only ``Empty``. On a connection that is gone the read raises a connection error and
the close stops before it closed anything. After a connection error Celery's consumer closes its
connection twice: ``Connection.collect()``, whose errors it ignores and which drops the transport's
connection info (``transport.client = None``) all the same, then ``Connection.close()``, which closes
the default channel again. That second close goes on, restores the channel's unacknowledged messages
through a pool rebuilt from ``transport.client``, and raises ``AttributeError: 'NoneType' object has no
attribute 'hostname'``, which nothing catches: "Unrecoverable error", and the worker process exits.

It takes a ``BRPOP`` in flight and unacknowledged messages at once: the webhook worker (a thread pool
with free slots). A solo worker with a prefetch of 1 (the GPU worker) sends no ``BRPOP`` while it holds
a message, so it was not hit, but runs the same channels.

The fix: the read in ``close()`` also takes a connection error (a reply lost with its connection cannot
be read anyway), so the first close completes while the connection info is still there: the restore is
tried (the unacknowledged messages stay in Redis's unacked index if the primary is gone, and the tasks
still running acknowledge them on the new primary), and the channel is closed once.
"""

from __future__ import annotations

from queue import Empty

from kombu.transport import redis as kombu_redis


def _read_brpop_reply(channel: kombu_redis.Channel) -> None:
    """What ``Channel.close`` does before it closes: read the reply of a ``BRPOP`` in flight (a message
    it popped is delivered, not lost), here also when the connection is gone."""
    if channel._in_poll:
        try:
            channel._brpop_read()  # type: ignore[no-untyped-call]
        except (Empty, *channel.connection_errors):
            pass  # _brpop_read has disconnected and forgotten the BRPOP: close() will not read it again


class Channel(kombu_redis.Channel):
    def close(self) -> None:
        _read_brpop_reply(self)
        super().close()  # type: ignore[no-untyped-call]


class SentinelChannel(kombu_redis.SentinelChannel):
    def close(self) -> None:
        _read_brpop_reply(self)
        super().close()  # type: ignore[no-untyped-call]


def use_fixed_channels() -> None:
    """Make kombu's ``redis`` and ``sentinel`` transports open these channels, in this process (kombu
    resolves a broker URL's scheme to these transport classes, on failover too)."""
    kombu_redis.Transport.Channel = Channel
    kombu_redis.SentinelTransport.Channel = SentinelChannel
