"""The auth service: certificate authorities' signing, users, bots, RBAC checks and its API."""
