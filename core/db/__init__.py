"""Database access: the Database Service agent, its engines, and the proxy side."""
