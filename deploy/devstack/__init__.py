"""The local development stack: real Redis and SeaweedFS servers, and the ``make run`` launcher."""
