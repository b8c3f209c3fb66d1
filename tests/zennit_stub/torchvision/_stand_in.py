"""Placeholders for the torchvision names that importers reach for but the tests never use."""


def placeholder(module: str, name: str) -> type:
    """A class named after the torchvision one; using it says why it is missing."""
    def refuse(self, *args, **kwargs):
        raise NotImplementedError(f"{module}.{name} is not in the tests' torchvision stand-in (tests/zennit_stub)")
    return type(name, (), {"__init__": refuse, "__module__": module})


def missing_names(module: str):
    """A module __getattr__ (PEP 562) that answers every public name with a placeholder."""
    made = {}

    def __getattr__(name):
        if name.startswith("_"):
            raise AttributeError(name)
        return made.setdefault(name, placeholder(module, name))
    return __getattr__
