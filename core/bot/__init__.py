"""Machine ID (``tbot``): the bot's configuration, storage, outputs and renewal engine.

See docs/design/machine-id.md for the server contracts (join, renew, output
certificates) and TELEPORT-REFERENCE §1 and §2 for the file formats this follows.
"""
