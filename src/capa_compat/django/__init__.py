"""Django on capa: the cache framework served by a capa state component (see ``.cache``)."""
