"""Import hook that registers our encoders when ESPnet's task modules load.

Installed at interpreter start-up by ``espnet_imlspike.pth`` (placed in site-packages
by the package's build). It costs one small meta-path finder (plain classes, no
importlib.abc, to keep start-up cheap): torch and ESPnet are
only touched after a program imports ``espnet2.tasks.asr`` or ``espnet2.tasks.spk``
itself.
"""

import sys

TARGETS = ("espnet2.tasks.asr", "espnet2.tasks.spk")


class _RegisteringLoader:
    """Delegates to the real loader, then registers into the executed module."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        from espnet_imlspike.registration import REGISTRARS

        REGISTRARS[module.__name__](module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class RegisterOnImport:
    """Meta-path finder that wraps the loader of ESPnet's task modules."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in TARGETS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once) and catch up on loaded modules."""
    if not any(isinstance(f, RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, RegisterOnImport())
    if any(name in sys.modules for name in TARGETS):
        from espnet_imlspike.registration import register_loaded

        register_loaded()


install()
