"""The admin page's routes: one module per feature, each exposing ``router``."""
