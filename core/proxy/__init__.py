"""The proxy service: one public TLS port routed by ALPN and SNI."""
