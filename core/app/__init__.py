"""Application access: the App Service agent, the HTTP forwarder, app JWTs and header rewrites."""
