"""CLI command groups: every module here exposing ``register(app)`` is added to ``dr4sr``."""
