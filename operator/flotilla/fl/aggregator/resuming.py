"""The resumable side of the intake: park a broken upload, find it again, check a resume fits.

A paused upload holds no receive buffer: what it delivered goes to disk (parking.py) and
its buffer back to the pool. Its client asks how much is held and sends the rest; the
parked bytes are read back into whichever buffer the resumed upload takes. Only the round
open now parks, and everything parked goes when it closes.
"""

from __future__ import annotations

import asyncio
import logging

from flotilla.fl.aggregator.errors import BadPayload, BadRange, UnknownUpload
from flotilla.fl.aggregator.links import LinkHealth
from flotilla.fl.aggregator.parking import Parked, ParkingLot, resume_problem
from flotilla.fl.aggregator.terms import UploadTerms
from flotilla.fl.receive import SafetensorsReceiver
from flotilla.fl.wire import WireError

log = logging.getLogger(__name__)

# Buffered aggregation has no rounds: an upload of any round may park until its client
# resumes it (one per site at most, as ever).
ANY_ROUND = -1


class Resumes:
    def __init__(self, lot: ParkingLot, *, links: LinkHealth) -> None:
        self.lot = lot
        self._links = links
        self._round: int | None = None  # the round uploads may be parked for, or ANY_ROUND

    def open_round(self, number: int) -> None:
        self._round = number

    def _parks(self, round_number: int) -> bool:
        return self._round == ANY_ROUND or round_number == self._round

    def close_round(self) -> None:
        """Nothing half-received outlives its round."""
        self._round = None
        self.lot.clear()

    def held(self, site: str, upload_id: str, round_number: int) -> int:
        """The payload bytes of the site's broken upload that a resume builds on."""
        parked = self.lot.find(site, upload_id, round_number)
        if parked is None:
            raise _unknown(site, upload_id, round_number)
        return parked.payload

    def claim(self, terms: UploadTerms, *, zstd: bool) -> Parked | None:
        """The parked upload this request resumes, checked; any other the site had goes."""
        site, tag = terms.site, terms.resumable
        if tag is None or tag.resume is None:
            self.lot.discard(site)  # a new upload of the site: what it had parked is moot
            return None
        parked = self.lot.find(site, tag.upload_id, terms.round_number)
        if parked is None:
            self.lot.discard(site)
            raise _unknown(site, tag.upload_id, terms.round_number)
        self.lot.claim(site)
        problem = resume_problem(
            parked,
            start=tag.resume.start,
            total=tag.resume.total,
            resume_from=tag.resume_from,
            rest=terms.size,
            zstd=zstd,
            frame_bytes=tag.frame_bytes,
            weights=terms.weights,
        )
        if problem:
            self.lot.forget(parked)
            raise BadRange(f"site {site!r}: {problem}; send it again from byte 0")
        return parked

    async def restore(
        self, parked: Parked, receiver: SafetensorsReceiver, terms: UploadTerms
    ) -> None:
        """The parked payload back into the receiver, which then continues the body."""
        try:
            await asyncio.to_thread(ParkingLot.read_into, parked, receiver)
        except WireError as error:
            raise BadPayload(str(error)) from None
        except OSError as error:
            raise BadRange(
                f"site {terms.site!r}: its parked upload is unreadable: {error}"
            ) from None
        start = receiver.wire_bytes = terms.resumed_at
        link = self._links.of(terms.site)
        link.resumed_uploads += 1
        link.resumed_bytes += start
        log.info(
            "site %s: upload %s resumes at byte %d of %d",
            terms.site,
            parked.upload_id,
            start,
            parked.total,
        )

    async def park(
        self, terms: UploadTerms, receiver: SafetensorsReceiver, *, zstd: bool, started: float
    ) -> None:
        """Keep a broken upload's payload on disk, off the pool, for its client to resume.
        `started`: when it first took a buffer (its pace carries over)."""
        tag = terms.resumable
        if tag is None or not self.lot.enabled or not self._parks(terms.round_number):
            return
        total = tag.resume.total if tag.resume else terms.size
        payload = receiver.resume_point(tag.frame_bytes if zstd else 0)
        if not total or not payload:
            return
        parked = Parked(
            site=terms.site,
            upload_id=tag.upload_id,
            round_number=terms.round_number,
            total=total,
            wire=receiver.wire_bytes,
            payload=payload,
            zstd=zstd,
            frame_bytes=tag.frame_bytes,
            weights=terms.weights,
            started=started,
            path=self.lot.new_path(terms.site),
        )
        try:
            await asyncio.to_thread(ParkingLot.write, parked, receiver.prefix(payload))
        except OSError as error:
            log.warning("site %s: cannot park its broken upload: %s", terms.site, error)
            self.lot.forget(parked)
            return
        if not self._parks(terms.round_number):  # the round closed meanwhile
            self.lot.forget(parked)
            return
        self.lot.add(parked)
        log.info(
            "site %s: upload %s broke off after %d of %d bytes; %d payload bytes parked",
            terms.site,
            tag.upload_id,
            receiver.wire_bytes,
            total,
            payload,
        )


def _unknown(site: str, upload_id: str, round_number: int) -> UnknownUpload:
    return UnknownUpload(
        f"site {site!r} has no broken upload {upload_id!r} of round {round_number} here to "
        "resume: send it again from byte 0"
    )
