"""The programs over the registry: the command line, the HTTP service, the daemon, metrics and the demo."""
