"""The two ways DR4SR+ refuses to go on."""

from __future__ import annotations


class PersonalizerConfigError(ValueError):
    """DR4SR+ cannot run with this config on these rows (e.g. no row has a
    weighted source). Out-of-range settings are pydantic ValidationErrors of
    :class:`models.config.PersonalizerConfig`."""


class PersonalizerError(RuntimeError):
    """DR4SR+ training cannot continue (e.g. a non-finite hypergradient)."""
