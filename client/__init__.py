"""The Python client: a pycrdt document kept in sync with a Tandem server.

sync (SyncClient: connection, reconnects, offline store, durable acknowledgements, presence),
sync_client (a synchronous facade for scripts), documents (typed operations on boards, texts
and discussions), store (the offline SQLite store), errors (refusals that stop the client).
"""
