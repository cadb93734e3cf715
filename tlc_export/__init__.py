"""tlc-export: export image-restoration networks with the Test-time Local Converter (TLC) in the graph."""
__version__ = "0.1.0"


def __getattr__(name):
    # Lazy: importing the package must stay cheap (the CLI imports torch only when it needs it).
    if name in ("convert", "localize_graph", "ConversionResult"):
        from . import api

        return getattr(api, name)
    if name == "to_local":
        from .reference import to_local

        return to_local
    raise AttributeError(name)
