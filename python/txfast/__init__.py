from txfast._core import __version__
