"""Compatibility: the public import path of plugins written before the core API moved to
``harness.core.registry`` (the same module object)."""

import sys

import harness.core.registry as _m

sys.modules[__name__] = _m
