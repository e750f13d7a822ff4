"""batchyard: a self-hostable, multi-tenant platform for Python batch jobs."""

__version__ = "0.1.0"
