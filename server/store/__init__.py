"""Persistence: SQLModel tables (users, tokens, studies) and the media store."""
