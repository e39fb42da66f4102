"""Credentials in URLs never shown: `scheme://user:password@host` becomes `scheme://***@host`.

One rule for every text Flotilla shows or stores (log lines, site errors, summaries,
MLflow params, spec errors): whatever stands between `://` and the last `@` of a URL's
authority is a secret, a password or a token alone (`https://TOKEN@host`) alike. The
authority ends where a parser such as urllib's or urllib3's ends it (`/`, `?`, `#` or
white space), so the part redacted is exactly what a client would send as credentials;
a password with an unencoded `/` makes no URL a parser reads so, and is not recognised.
An address without a scheme (`bob@example.org`) holds no credential and is left alone.

``install_log_redaction`` applies the rule to every log record a process makes, at its
creation: a filter on a handler would miss loggers that do not propagate (MLflow's own)
and handlers added later (kopf's), and a filter on the root logger sees no record
propagated from below it. It redacts the traceback of an uncaught exception too.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from types import TracebackType
from typing import Any

REDACTED = "***"
# The lookbehind starts a scheme only at the start of a word, which keeps the scan linear.
_USERINFO = re.compile(r"(?<![A-Za-z0-9+.\-])([A-Za-z][A-Za-z0-9+.\-]*://)[^/?#\s]+@")


def redact_urls(text: str) -> str:
    """``text`` with the userinfo of every URL in it replaced by ``***``."""
    if "@" not in text:
        return text  # the common case, without a regex
    return _USERINFO.sub(rf"\1{REDACTED}@", text)


def install_log_redaction() -> None:
    """Make every later log record of this process, from any logger, free of URL credentials.

    Idempotent: the record factory is wrapped once.
    """
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacts_urls", False):
        return

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return redact_record(factory(*args, **kwargs))

    redacting_factory.redacts_urls = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_factory)
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _print_redacted


def _print_redacted(
    kind: type[BaseException], error: BaseException, trace: TracebackType | None
) -> None:
    """An uncaught exception's traceback, as Python prints it, without URL credentials."""
    sys.stderr.write(redact_urls("".join(traceback.format_exception(kind, error, trace))))


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """The record with its message (after %-formatting), traceback and stack redacted."""
    try:
        message = record.getMessage()
    except Exception:  # bad %-args: logging reports them itself when it formats
        message = None
    if message is not None and (redacted := redact_urls(message)) != message:
        record.msg, record.args = redacted, None
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        # Formatters use exc_text when it is set; formatting it now lets it be redacted.
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        record.exc_text = redact_urls(text)
    if record.stack_info:
        record.stack_info = redact_urls(record.stack_info)
    return record
