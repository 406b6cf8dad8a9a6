"""The error of a bad job request field, on its own so that jobspec.py and graders.py both import it without
importing each other."""
from __future__ import annotations

from ..errors import ConfigError


class JobRequestError(ConfigError):
    """A bad field of a job request; `key` is the request parameter (dotted) the message is about."""
