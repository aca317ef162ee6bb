"""Actors (``@rtd.remote`` on a class) are the next milestone; until then every entry
point says so clearly."""


def _not_implemented(what):
    raise NotImplementedError(f"{what}: actors are not implemented in rtd yet.")


def make_actor_class(cls, options):
    _not_implemented(f"@rtd.remote on class {cls.__name__}")


def method(*args, **kwargs):
    _not_implemented("rtd.method")


def kill(actor, *, no_restart=True):
    _not_implemented("rtd.kill")


def get_actor(name, namespace=None):
    _not_implemented("rtd.get_actor")
