"""The PostgreSQL engine: wire protocol, upstream connection, session handling."""
