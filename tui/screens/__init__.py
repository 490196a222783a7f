"""The dashboard's screens, one per file with its .tcss beside it."""
