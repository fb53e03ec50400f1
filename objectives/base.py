"""Compatibility: ``objectives.base`` was the home of the :class:`Objective` interface before it
moved to :mod:`harness.core.objective` (the same module object)."""

import sys

import harness.core.objective as _m

sys.modules[__name__] = _m
