"""Durable storage: the update log, snapshots and the group-commit writer."""
