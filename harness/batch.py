"""Compatibility: the public import path of plugins written before the core API moved to
``harness.core.batch`` (the same module object)."""

import sys

import harness.core.batch as _m

sys.modules[__name__] = _m
