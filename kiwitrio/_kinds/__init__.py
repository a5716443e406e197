"""The message kinds, written against the backend interface (kiwitrio/_backends/) only.

- :mod:`._tasks` (with :mod:`._leases` for long tasks, :mod:`._admin` for the catalogue of
  task queues, purging and deleting): the durable work queue;
- :mod:`._rpc`: calls to a named, live recipient;
- :mod:`._broadcast`: one-to-many messages with filters;
- :mod:`._replies`: results and remote exceptions back to the senders of tasks and RPCs;
- :mod:`._control`: inspect, ping and shutdown requests between communicators;
- :mod:`._pipeline`: the delivery pipeline they all consume through;
- :mod:`._context`: the state one communicator's kinds share (session, nursery, codec);
- :mod:`._invoke`: calling subscribers, async or plain.
"""
