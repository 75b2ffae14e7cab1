"""The HTTP edge: blueprints, authentication, errors, metrics, the gunicorn worker."""
