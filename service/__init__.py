"""The metah service: command line, HTTP API and job workers on top of ``model`` and ``index``."""
