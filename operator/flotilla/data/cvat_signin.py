"""Sign a cvat-sdk client in to a CVAT server of either generation, and learn its version.

A password signs in at ``/api/auth/login`` (session and CSRF cookies) on every server.
A key is where the generations differ: servers with personal access tokens take them as
``Authorization: Bearer <token>``; CVAT 2.2x servers have none (``/api/auth/access_tokens``
is 404) and take their API key only as ``Authorization: Token <key>``, answering 401 to
``Bearer``. A key is tried as ``Bearer`` and, on 401, as ``Token``: the server's own
answer decides, not a table of versions. A version table would guess wrong behind a
proxy that hides ``/api/server/about``, on a server that keeps legacy keys beside
access tokens, and on whichever release moves the line next; the cost of asking is one
extra request when signing in to a 2.2x server. Errors are left to the caller, which
translates them once; the key never reaches a log line.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flotilla.data.cvat_credentials import CvatCredentials

log = logging.getLogger(__name__)
SCHEMES = ("Bearer", "Token")  # access token (current servers), API key (CVAT 2.2x)


def sign_in(client: Any, credentials: CvatCredentials) -> None:
    """Sign in and ask for the current user at once: a key is only checked on use."""
    from cvat_sdk.api_client.exceptions import UnauthorizedException
    from cvat_sdk.core.client import PasswordCredentials

    if not credentials.access_token:
        assert credentials.username and credentials.password
        client.login(PasswordCredentials(credentials.username, credentials.password))
        client.users.retrieve_current_user()
        return
    for scheme in SCHEMES:
        _send_key_as(client, credentials.access_token, scheme)
        try:
            client.users.retrieve_current_user()
        except UnauthorizedException:
            if scheme == SCHEMES[-1]:
                raise
            continue
        log.info("signed in with a key sent as Authorization: %s", scheme)
        return


def _send_key_as(client: Any, key: str, scheme: str) -> None:
    configuration = client.api_client.configuration
    configuration.access_token = key if scheme == "Bearer" else None  # the SDK's "Bearer"
    if scheme == "Token":
        configuration.api_key["tokenAuth"] = key  # sent with the SDK's "Token" prefix
    else:
        configuration.api_key.pop("tokenAuth", None)


def server_version(client: Any) -> str:
    """The version the server reports; raises when it reports none."""
    # The raw answer, not the SDK's model: CVAT 2.2x's About lacks fields today's SDK
    # requires (logo_url, subtitle), and only the version matters here.
    _, response = client.api_client.server_api.retrieve_about(_parse_response=False)
    return str(json.loads(response.data)["version"])
