

def lazy(name: str):
    """``name`` as a module that is imported on first attribute access (importlib's
    LazyLoader): command modules name what their commands use without importing pyroute2,
    pydantic and the engine when only the parser is built (``--help``, completion)."""
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
