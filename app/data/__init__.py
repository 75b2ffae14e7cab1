"""The data model: SQLAlchemy models, the engine and its sessions, the schema."""
