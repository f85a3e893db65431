"""Start-up hook of timm-lap (run from ``timm_lap_autoload.pth``): stdlib only, costs microseconds.

It waits for ``timm`` to be imported, then imports ``timm_lap`` so that the ``*_lap``
models are registered even in scripts that never import timm_lap themselves.
Set ``TIMM_LAP_AUTOLOAD=0`` to turn it off.
"""
import os
import sys


class _RegisterAfterTimm:
    """Loader proxy: runs timm's own loader, then registers the LAP models."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            import timm_lap.models  # noqa: F401  (registers the models)
        except Exception as exc:  # never break `import timm`
            import warnings

            warnings.warn(f"timm_lap autoload failed ({exc!r}); `import timm_lap` explicitly.", stacklevel=2)


class _TimmImportWatcher:
    """Meta-path finder that only answers for the top-level ``timm`` package, once."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm":
            return None
        _uninstall()
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisterAfterTimm(spec.loader)
                return spec
        return None


def _enabled():
    return os.environ.get("TIMM_LAP_AUTOLOAD", "1").strip().lower() not in ("0", "false", "no", "off")


def _uninstall():
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TimmImportWatcher)]


def install(force=False):
    """Watch for ``import timm``; ``force=True`` (from ``import timm_lap``) ignores TIMM_LAP_AUTOLOAD=0."""
    if not (force or _enabled()) or any(isinstance(f, _TimmImportWatcher) for f in sys.meta_path):
        return
    if "timm" in sys.modules:  # timm already imported (e.g. install() called late): register now
        import timm_lap.models  # noqa: F401
        return
    sys.meta_path.insert(0, _TimmImportWatcher())


install()
