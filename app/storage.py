"""Moved to :mod:`app.core.storage` (infrastructure shared with the workers).
This alias keeps code written against the old path working: it is the same
module object, so patches through either name agree."""

import sys

from app.core import storage as _module

sys.modules[__name__] = _module
