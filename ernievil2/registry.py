"""Explicit name -> builder tables, with "did you mean" errors.

Registries are filled where they are declared (a dict literal in the module
that owns the builders), never as an import side effect, so the set of names is
visible in one place. A project outside the package adds its own builders
with ``register`` before it loads a config that names them.
"""
import difflib
import inspect


class ConfigError(ValueError):
    """A configuration problem, located by key path (and file when known)."""

    def __init__(self, key, message, source=None):
        self.key = key
        self.message = message
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {message}")

    def __reduce__(self):
        return type(self), (self.key, self.message, self.source)

    def __eq__(self, other):
        return type(self) is type(other) and (self.key, self.message, self.source) == (other.key, other.message, other.source)

    __hash__ = ValueError.__hash__

    def located(self, source):
        """The same error, attributed to ``source`` (a file or an override)."""
        return ConfigError(self.key, self.message, source)

    def under(self, prefix):
        """The same error, its key read inside the section at ``prefix`` (``pairs[0]`` -> ``Loss.terms[1].pairs[0]``)."""
        return ConfigError(f"{prefix}.{self.key}" if self.key else prefix, self.message, self.source)


def closest(name, choices):
    """The choice most like ``name`` (a likely typo of it), or None."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return close[0] if close else None


def did_you_mean(name, choices):
    close = closest(name, choices)
    return f"; did you mean {close!r}?" if close else ""


class Registry:
    def __init__(self, kind, builders):
        self.kind = kind
        self._builders = dict(builders)

    def register(self, name, builder):
        """Add a builder from outside the package (a project's own tower or loss term); names are never replaced."""
        if name in self._builders:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._builders[name] = builder
        return builder

    def __contains__(self, name):
        return name in self._builders

    def names(self):
        return sorted(self._builders)

    def get(self, name, key="name"):
        if name not in self._builders:
            raise ConfigError(
                key,
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
                + did_you_mean(name, self._builders),
            )
        return self._builders[name]

    def resolve(self, section, key, context_keys=()):
        """The builder and keyword arguments of ``{name: ..., **kwargs}``, the keys checked against its signature.

        ``context_keys``: arguments the caller gives (the trainer's global batch, say), never the config.
        """
        if not isinstance(section, dict) or "name" not in section:
            raise ConfigError(key, f"expected a mapping with a 'name' of a {self.kind}")
        kwargs = dict(section)
        builder = self.get(kwargs.pop("name"), key=f"{key}.name")
        for option in kwargs:
            if option in context_keys:
                raise ConfigError(f"{key}.{option}", "set by the trainer, not in the config")
        check_kwargs(builder, kwargs, key)
        return builder, kwargs

    def check(self, section, key, context=None):
        """Check a section without building it (at config load): names and keys as :meth:`resolve` does, and the
        values too when the builder has a ``check(**kwargs)``: a static method raising :class:`ConfigError`
        keyed inside the section (its constructor calls it too), given the ``context`` it takes. Returns what
        that ``check`` returns (None without one)."""
        context = context or {}
        builder, kwargs = self.resolve(section, key, tuple(context))
        if not hasattr(builder, "check"):
            return None
        try:
            return builder.check(**kwargs, **_taken(builder.check, context))
        except ConfigError as err:
            raise err.under(key) from None

    def build(self, section, key, context=None):
        """Build from ``{name: ..., **kwargs}``; a :class:`ConfigError` of the builder is keyed inside ``key``.

        ``context``: keyword arguments the caller knows and the config does not set, passed
        to builders that take them.
        """
        context = context or {}
        builder, kwargs = self.resolve(section, key, tuple(context))
        try:
            return builder(**kwargs, **_taken(builder, context))
        except ConfigError as err:
            raise err.under(key) from None


def _taken(fn, context):
    """The entries of ``context`` that ``fn`` has a parameter for."""
    taken = inspect.signature(fn).parameters
    return {k: v for k, v in context.items() if k in taken}


def check_kwargs(fn, kwargs, key):
    """Reject keyword arguments ``fn`` does not take, naming the config key."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for name in kwargs:
        if name not in allowed:
            raise ConfigError(
                f"{key}.{name}",
                f"unknown key; {getattr(fn, '__name__', fn)} takes: {', '.join(allowed)}"
                + did_you_mean(name, allowed),
            )
    missing = [
        n
        for n, p in params.items()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and n not in kwargs
    ]
    if missing:
        raise ConfigError(key, f"missing required key(s): {', '.join(missing)}")
