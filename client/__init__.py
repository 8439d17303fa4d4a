"""The Python client: a pycrdt document kept in sync with a Tandem server."""
