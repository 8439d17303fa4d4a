"""The sidecar: reads the change feed and derives the task list, notifications, reminders,
webhooks and e-mail from it (service.py puts the pieces together)."""
