"""Moved to :mod:`app.core.broker` (infrastructure shared with the workers).
This alias keeps code written against the old path working: it is the same
module object, so patches through either name agree."""

import sys

from app.core import broker as _module

sys.modules[__name__] = _module
