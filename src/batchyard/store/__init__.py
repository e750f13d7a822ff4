"""Persistence: SQLAlchemy models, queries and migrations. Every query is scoped by account."""
