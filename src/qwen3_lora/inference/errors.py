"""The error of every inference path (predict, eval, test, route, serve)."""

from __future__ import annotations

from ..errors import UserError


class PredictorError(UserError):
    """A predictor cannot be built or asked as requested; the message says what to change."""
