"""``typing.NamedTuple``'s class syntax, without importing ``typing`` at run time.

The command line's cache hit and read commands define a score of NamedTuples as they start.
``typing`` alone costs them about a fifth of a floor interpreter, and its NamedTuple checks
each field's annotation (compiling every string annotation into a ForwardRef); the same
``collections.namedtuple`` class is made here from the annotations' names alone. Type
checkers see ``typing.NamedTuple`` itself.
"""

from __future__ import annotations

import collections

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
else:
    # What the class body may not set, and what it sets that the tuple keeps its own of.
    _PROHIBITED = frozenset({"__new__", "__init__", "__slots__", "__getnewargs__", "_fields",
                             "_field_defaults", "_make", "_replace", "_asdict", "_source"})
    _SPECIAL = frozenset({"__module__", "__name__", "__annotations__"})

    class _NamedTupleMeta(type):
        """Makes the class body's fields, defaults, methods and docstring a namedtuple."""

        def __new__(cls, name, bases, namespace):
            fields = namespace.get("__annotations__", {})
            defaults = [namespace[field] for field in fields if field in namespace]
            made = collections.namedtuple(name, fields, defaults=defaults, module=namespace["__module__"])
            made.__annotations__ = made.__new__.__annotations__ = dict(fields)
            for key, value in namespace.items():
                if key in _PROHIBITED:
                    raise AttributeError(f"Cannot overwrite NamedTuple attribute {key}")
                if key not in _SPECIAL and key not in made._fields:
                    setattr(made, key, value)
            return made

    NamedTuple = type.__new__(_NamedTupleMeta, "NamedTuple", (), {})
