"""The life of one file: take, claim, key, upload, verify, settle, and its one log line."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import stat
import time
from typing import TYPE_CHECKING

from s3spool import errors
from s3spool.config.codecs import choose
from s3spool.run.batch import Batches
from s3spool.run.compress import compressed, rules_for
from s3spool.run.progress import Counts
from s3spool.run.settle import NotStarted, Outcomes, Resubmits
from s3spool.spool.cleanup import cautious_now
from s3spool.spool.keys import KeyTemplate, claim_input
from s3spool.spool.scan import entry_kind, hold_left
from s3spool.spool.spool import Claim, about, open_claimed
from s3spool.spool.watch import Item, WarnOnce
from s3spool.store.aimd import retry_delay
from s3spool.store.base import Delivery

if TYPE_CHECKING:
    from s3spool.run.routes import RouteRun

log = logging.getLogger("s3spool.service")  # the name operators' log filters know


class NotStored(Exception):
    """A recovered claim that may have been forming a batch, not in the store: it goes into
    a batch, not alone."""


class Pipeline:
    """One route's per-file work, and the per-file state that outlives one attempt."""

    def __init__(self, host: RouteRun, counts: Counts | None = None) -> None:
        self.s = settings = host.s
        self.host = host
        self.once = host.once
        self.template = KeyTemplate(settings.key_format, settings.prefix, settings.hostname_field)
        self.compression = rules_for(settings)  # its library was checked with the settings
        if any(sp.recursive for sp in host.spools) and self.template.fields.isdisjoint(
            {"relpath", "dirname"}
        ):
            log.warning(
                "RECURSIVE is on but KEY_FORMAT %r uses neither {relpath} nor {dirname}: files "
                "of one name in different subdirectories get the same key",
                settings.key_format,
            )
        self._warn = WarnOnce()
        self.resubmits = Resubmits(settings)
        # future-dated files: when first looked at (monotonic, immune to clock steps)
        self._first_seen: dict[Item, float] = {}
        self.outcomes = Outcomes(
            settings,
            host.spools,
            trip=host.trip,
            once=self.once,
            metrics=host.metrics,
            guards=host.guards,
            resubmits=self.resubmits,
            stable_keys=self.template.stable,
            counts=counts,
        )
        self.outcomes.notifications = host.notifications
        # BATCH=bundle; and recovered batches whatever BATCH is now
        self.batches = Batches(host, self.outcomes, upload=self.upload, deliver=self.deliver)

    async def take(self, item: Item) -> None:
        spool, name = item
        if self.host.stopping:
            return
        try:
            st = os.lstat(spool.incoming_s + name)
        except FileNotFoundError:
            return
        except OSError as exc:
            if self._warn((item, "lstat")):
                about(log.warning, spool, name, "cannot stat: %s", exc.strerror)
            return
        if not stat.S_ISREG(st.st_mode):
            kind = entry_kind(st.st_mode)
            if self._warn((item, kind)):
                about(log.warning, spool, name, "skipped, %s (left in place)", kind)
            return
        # backoffs on the monotonic clock; a file's age on the wall clock of its mtime
        mono = time.monotonic()
        wait = self.resubmits.wait(item, mono) if spool.dirs.resubmit else 0.0
        if self.s.hold_for > 0:
            now = cautious_now()
            seen_for = 0.0
            if st.st_mtime > now + 1:
                # a clock ahead of ours (or ours stepped back): HOLD_FOR counts from first sight
                seen_for = mono - self._first_seen.setdefault(item, mono)
                if self._warn((item, "future")):
                    about(
                        log.warning, spool, name, "mtime is in the future; HOLD_FOR counts from now"
                    )
                if len(self._first_seen) > 100_000:
                    self._first_seen.pop(next(iter(self._first_seen)))
            wait = max(wait, hold_left(st.st_mtime, self.s.hold_for, now, seen_for))
        if wait > 0:
            if not self.once:
                self.host.discovery.defer(item, wait + 0.01)
            return
        guard = self.host.guards[spool]
        if guard.paused and guard.fault is not None:
            self.outcomes.left_behind(guard.fault)  # its healing rescans the spool
            return
        await self.host.gate.wait()
        if self.host.stopping:
            return
        counts = self.outcomes.counts
        if counts.claims_left is not None and counts.claims_left <= 0:
            self._max_files_reached(counts)
            return
        try:
            claim = spool.claim(name)
        except errors.LocalFault as exc:
            self.host.trip(spool, exc)
            self.outcomes.left_behind(exc)
            return
        except errors.Busy:
            if not self.once:
                self.host.discovery.defer(item, 1.0)
            return
        except errors.TransientError as exc:
            about(log.warning, spool, name, "%s", exc)
            return
        if claim is None:
            return  # another worker or instance won the rename
        if counts.claims_left is not None:
            counts.claims_left -= 1
        claim.ctime = st.st_ctime
        self.resubmits.taken(item)
        self._first_seen.pop(item, None)
        if self.batches.on and st.st_size <= self.s.batch_file_limit:
            claim.size, claim.mtime, claim.mtime_ns = st.st_size, st.st_mtime, st.st_mtime_ns
            if self._keyed(claim):
                await self._into_batch(claim)
                return
        await self.deliver(claim)

    def _max_files_reached(self, counts: Counts) -> None:
        """--once: a file is left over; the drain ends with the claims it has (exit 75)."""
        if not counts.bounded:
            counts.bounded = f"MAX_FILES {self.s.max_files} reached"
            msg = "%s: no more files are claimed; the rest waits for the next run"
            log.info(msg, counts.bounded)

    async def deliver(self, claim: Claim, *, recovered: bool = False) -> None:
        """``recovered``: a claim of an earlier life, from the queue (not one a batch sends
        alone). With BATCH and no key on record it was forming a batch (or went alone before
        the crash): after a look at the store, it goes into a batch."""
        spool, name = claim.spool, claim.name
        started = time.monotonic()
        batchable = recovered and claim.recovered and not claim.key and self.batches.on
        try:
            open_claimed(claim)
        except errors.FileVanished as exc:
            about(log.warning, spool, name, "%s; nothing to deliver", exc)
            spool.forget_key(claim)
            return
        except errors.NotAFile as exc:
            # swapped after the check: give it back untouched, like any non-regular file
            about(log.warning, spool, name, "skipped, %s (returned to incoming/)", exc)
            spool.unclaim(claim)
            return
        except errors.PermanentError as exc:
            self.outcomes.settle(claim, exc, started)
            return
        batchable = batchable and claim.size <= self.s.batch_file_limit and self._keyed(claim)
        delivery: Delivery | None = None
        try:
            delivery = await self.upload(claim, batchable=batchable)
        except NotStored:
            pass
        except NotStarted as why:
            if why.local is not None:
                if claim.recovered:
                    # its key record must survive: deliver it from working/ once healed
                    put = self.host.pending.put_claim
                    self.outcomes.strand(claim, why.local, lambda: put(claim))
                    return
                self.outcomes.left_behind(why.local)
                spool.unclaim(claim)
                self.host.trip(spool, why.local)  # its healing rescans incoming/
                return
            if claim.recovered:
                # its key record must survive: the next start delivers it to the same key
                about(log.info, spool, name, "recovered claim left in working/ for the next start")
                return
            spool.unclaim(claim)
            if why.retry_after is not None and not self.once:
                self.host.discovery.defer((spool, name), why.retry_after)
            return
        except errors.UploadError as exc:
            self.outcomes.settle(claim, exc, started)
            return
        except asyncio.CancelledError:
            self.outcomes.cancelled(claim)
            raise
        finally:
            os.close(claim.fd)
        if delivery is None:
            await self._into_batch(claim)
            return
        # No await between a confirmed upload and settling: cancellation cannot split them.
        self.outcomes.settle(claim, delivery, started)

    def _render_key(self, claim: Claim) -> None:
        """COMPRESS: whether (so the key's suffix) follows from its name and size, fixed here
        with the key (a batch member's too: the codec and suffix a per-file run gives)."""
        claim.codec, suffix = choose(self.compression, claim.name, claim.size)
        claim.key = self.template.render(claim_input(claim), suffix)

    def _keyed(self, claim: Claim) -> bool:
        """A batch member's codec and key; False if the key cannot be rendered (upload()
        renders it again and settles the error)."""
        try:
            self._render_key(claim)
        except errors.UploadError:
            claim.key = ""
            return False
        return True

    async def _into_batch(self, claim: Claim) -> None:
        try:
            batch = self.batches.add(claim)
        except errors.UploadError:
            claim.key = ""  # its batch's key or its options cannot be rendered: alone
            await self.deliver(claim)
            return
        if batch is not None:
            await self.batches.deliver(batch)

    async def upload(self, claim: Claim, *, batchable: bool = False) -> Delivery:
        """``batchable``: a recovered claim the store does not hold raises NotStored."""
        assert self.host.store is not None
        store = self.host.store
        if not claim.key:
            self._render_key(claim)
            # a key that a restart would not render again (or a long upload) is recorded first
            if not self.template.stable or claim.size >= self.s.multipart_from:
                try:
                    claim.spool.save_key(claim)
                except errors.TransientError as exc:
                    # never upload under a key a crash could forget: give the file back
                    claim.key = ""
                    if isinstance(exc, errors.LocalFault):
                        about(log.debug, claim.spool, claim.name, "%s", exc)
                        raise NotStarted(local=exc) from None
                    msg = "%s; returned to incoming/, retrying later"
                    about(log.error, claim.spool, claim.name, msg, exc)
                    raise NotStarted(retry_after=self.s.retry_backoff_max) from None

        begun = False
        while True:
            if self.host.stopping and not begun:
                raise NotStarted
            await self.host.gate.wait()
            if self.host.stopping and not begun:
                raise NotStarted
            try:
                async with self.host.throttle.hold(1):
                    begun = True
                    if claim.recovered:
                        if await store.delivered(claim):
                            claim.recovered = False
                            return Delivery(claim.key, claim.size, already_there=True)
                        claim.recovered = False
                        if batchable:
                            raise NotStored
                    if self.s.fail_rate and random.random() < self.s.fail_rate:
                        raise errors.PermanentError(
                            "injected failure (FAIL_RATE)", reason="injected"
                        )
                    if claim.codec is None:
                        delivery = await store.upload(claim)
                    else:
                        async with compressed(claim, self.compression, self.s) as copy:
                            delivery = await store.upload(copy)
                        delivery.stored, delivery.size = delivery.size, claim.size
                what = claim.changed()
                if what is not None:
                    raise errors.FileChanged(what, reason="changed")
                self.host.throttle.on_success()
                return delivery
            except errors.FileChanged as exc:
                claim.attempts += 1
                if claim.attempts >= self.s.retry_attempts:
                    raise
                claim.restat()
                about(log.warning, claim.spool, claim.name, "%s; uploading again", exc)
            except errors.LocalFault as exc:
                # no room for the compressed copy: an earlier attempt may have sent it, so check
                claim.recovered = claim.recovered or claim.attempts > 0
                raise NotStarted(local=exc) from None
            except errors.StoreUnavailable as exc:
                await self.host.pause(exc)
            except errors.Refused as exc:
                # One object refused: a prefix policy or a KMS grant, or the whole store?
                try:
                    await store.probe()
                except errors.StoreUnavailable as down:
                    await self.host.pause(down)
                    continue
                raise errors.PermanentError(str(exc), reason=exc.reason) from None
            except errors.PreconditionFailed:
                if await store.delivered(claim):  # OVERWRITE=never: the object may be ours
                    return Delivery(claim.key, claim.size, already_there=True)
                raise
            except errors.TransientError as exc:
                claim.attempts += 1
                self.host.metrics.retries.labels(claim.spool.label).inc()
                self.host.metrics.failures.labels(claim.spool.label, exc.reason).inc()
                if claim.attempts >= self.s.retry_attempts:
                    try:
                        await store.probe()
                    except errors.StoreUnavailable as down:
                        # the store is the problem, not this file: wait, then start over
                        claim.attempts = 0
                        await self.host.pause(down)
                        continue
                    raise
                delay = retry_delay(
                    claim.attempts,
                    self.s.retry_backoff,
                    self.s.retry_backoff_max,
                    slowdown=isinstance(exc, errors.SlowDown),
                )
                retry = f"retry {claim.attempts}/{self.s.retry_attempts - 1} in {delay:.2f}s"
                about(log.info, claim.spool, claim.name, "%s; %s", exc, retry)
                await asyncio.sleep(delay)
