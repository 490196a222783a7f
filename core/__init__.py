"""Jumpgate core engine: no terminal UI here."""
