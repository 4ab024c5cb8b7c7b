"""The console's pages, one module each; each has ``install(api)``."""
