"""Compatibility layers for configs written for another program (``sagator``: SAGATOR's module names).

Kept apart from the native config surface (``from mailsift import *``): the
loader imports a layer only when a config uses that program's names.
"""
