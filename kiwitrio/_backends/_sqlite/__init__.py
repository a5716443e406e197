"""A broker in a SQLite file, shared by the processes of one host; no server process.

:func:`open_sqlite_session` opens a :class:`~kiwitrio.backends.Session` on
``sqlite:///abs/path.db``, with the semantics of the memory broker and RabbitMQ
(tests/test_backend_contract.py), kept in the file (WAL mode) so that they survive any process
being killed and a reboot:

* exchanges, queues, bindings and messages are rows; every operation is one transaction, and
  ``publish`` returns after its COMMIT (the "confirm");
* each session is a ``connections`` row with a heartbeat; exclusive queues belong to one, and
  the messages it holds (delivered, unsettled) are marked with it. When it closes, or others
  find it dead (its heartbeat older than the liveness timeout, or its doorbell gone with its
  process), what it held goes back to the queues and its exclusive queues are deleted;
* consumers are woken by doorbells (:mod:`._doorbell`), with a slow poll as the safety net.

Length limits as in the memory broker (``x-max-length`` with ``x-overflow:
reject-publish`` only). Not implemented: the difference between durable and transient
entities (everything is kept in the file until deleted).

Modules: ``_options`` (the URL), ``_schema`` (tables, version check), ``_values`` (headers
as text), ``_store`` (transactions off the Trio thread), ``_entities`` (exchanges, queues,
bindings, connections), ``_messages`` (routing, claiming, settling, expiry, dead letters),
``_doorbell`` (wake-ups), ``_session`` (the Session).
"""

from ._options import SqliteOptions
from ._schema import SCHEMA_VERSION, SchemaMismatch
from ._session import open_sqlite_session

__all__ = ["SCHEMA_VERSION", "SchemaMismatch", "SqliteOptions", "open_sqlite_session"]
