"""The registry's rules, as flows that yield typed effects, composed by the registries of
:mod:`media_registry.registry` over one shared :class:`~.context.Context`."""
