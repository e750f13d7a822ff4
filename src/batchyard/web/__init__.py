"""The web console: server-rendered pages for people (session cookie + CSRF token)."""
