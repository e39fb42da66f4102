"""Why the aggregator refuses a client's request: one exception class a reason, no HTTP.

A refusal is raised before the request changed anything (an upload refused never reaches
the aggregate). The HTTP layer answers each kind with its status and wire reason, in one
table (http_errors.py); nothing here knows a status code, so the engine's parts are
tested by the kind they raise.
"""

from __future__ import annotations


class Refused(Exception):
    """A request the aggregator refuses; nothing changed.

    `cut`: the body was cut off, or is not worth reading (a trickle, a second upload of a
    site): the answer goes at once and no more of the body is read."""

    def __init__(self, message: str, *, cut: bool = False) -> None:
        super().__init__(message)
        self.cut = cut


# -- who asks ----------------------------------------------------------------------------


class Unauthenticated(Refused):
    """No bearer token, or one no site holds."""


class WrongSite(Refused):
    """The site a request says it comes from is not its token's."""


# -- the round and the model -------------------------------------------------------------


class RoundClosed(Refused):
    """The round an upload is for is not open: closed, not open yet, or another round."""


class NotSampled(Refused):
    """The site is not one the open round asked."""


class AlreadyAnswered(Refused):
    """The site's update of the open round is folded already."""


class TooStale(Refused):
    """An update of buffered aggregation whose base model is more server steps behind the
    current one than `spec.strategy.buffered.maxStaleness` allows."""


class AlreadyFolded(AlreadyAnswered):
    """An upload (its id) that is folded already: its client sends it again after losing
    the answer, e.g. across an aggregator restart."""


class StaleVersion(Refused):
    """A model version older than the one served."""


class UnknownVersion(Refused):
    """A model version newer than the one served."""


class NotEvaluating(Refused):
    """No evaluation is asked of the site now."""


class EvaluationNotAsked(Refused):
    """An evaluation of another model version than the one asked."""


# -- upload bodies -----------------------------------------------------------------------


class UploadInProgress(Refused):
    """The site is uploading already: one upload per site at a time."""


class TooLarge(Refused):
    """A body larger than any update (or report) of this job."""


class BadPayload(Refused):
    """A body that is no update in the job's layout (its header, size or framing)."""


class BadValues(Refused):
    """An update whose values fail a check: not finite, or beyond the norm bound."""


class TooSlow(Refused):
    """A body that stalled, or arrived below the floor rate."""


class Yielded(Refused):
    """A body too slow to arrive before its round closes, while other uploads wait."""


class ConnectionLost(Refused):
    """The body's connection broke off (what arrived is parked when resumable)."""


class Superseded(Refused):
    """A new connection of the same upload took this one's place."""


class UnknownUpload(Refused):
    """No broken upload of the site's with this id and round is held to resume."""


class BadRange(Refused):
    """A range that does not fit: not where the held bytes end, or not the model's size."""


# -- what clients say --------------------------------------------------------------------


class BadExamples(Refused):
    """An example count that is no positive integer in bounds."""


class BadMetrics(Refused):
    """Training or evaluation metrics out of bounds, of the wrong type, or unknown."""


class BadReport(Refused):
    """A site report (ready, its label report, or its error) of the wrong shape."""


# -- the request's form ------------------------------------------------------------------


class BadQuery(Refused):
    """A query parameter that is not a finite number."""


class BadPath(Refused):
    """A path parameter that is not a non-negative integer."""


class BadHeader(Refused):
    """A header of Flotilla's protocol whose value is not of its form."""


class BadEncoding(Refused):
    """A body encoding the aggregator does not read (Content-Encoding, or unknown)."""


class BadUpdateKind(Refused):
    """An update kind other than a delta, or weights for a job that sends no float32."""


class BadUploadId(Refused):
    """An upload id that is not one a client makes."""


class BadJson(Refused):
    """A body that is no JSON object."""
