"""Jumpgate command-line faces."""
