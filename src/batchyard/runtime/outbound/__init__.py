"""Outbound: what the platform sends out (SMTP, webhooks)."""
