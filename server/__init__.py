"""Tandem: a real-time collaboration server speaking the Yjs protocols."""

__version__ = "0.1.0"
