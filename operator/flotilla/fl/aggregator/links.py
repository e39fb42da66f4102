"""Each site's link as the aggregator sees it: broken transfers, resumed bytes, upload rate.

Counted where transfers happen (the intake for uploads, the model route for downloads) and
read by /v1/status and the Prometheus collector; since the aggregator started.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class SiteLink:
    upload_resets: int = 0  # upload connections that broke off mid-body
    download_resets: int = 0  # model downloads that broke off mid-body
    resumed_uploads: int = 0
    resumed_downloads: int = 0
    resumed_bytes: int = 0  # bytes not sent again thanks to a resume, both directions
    upload_bytes_per_second: float | None = None  # the latest whole upload body, on the wire

    def json(self) -> dict[str, Any]:
        return {
            "uploadResets": self.upload_resets,
            "downloadResets": self.download_resets,
            "resumedUploads": self.resumed_uploads,
            "resumedDownloads": self.resumed_downloads,
            "resumedBytes": self.resumed_bytes,
            "uploadBytesPerSecond": self.upload_bytes_per_second,
        }


class LinkHealth:
    def __init__(self) -> None:
        self.sites: dict[str, SiteLink] = {}

    def of(self, site: str) -> SiteLink:
        return self.sites.setdefault(site, SiteLink())

    def json(self) -> dict[str, dict[str, Any]]:
        return {site: link.json() for site, link in sorted(self.sites.items())}
