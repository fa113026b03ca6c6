"""Cross-references for a batch: loaded with one query, looked up without any.

The mapping engine's `lookup` transform asks "which KashFlow customer is Account 001…?"; a flow
prefetches the keys a batch needs and hands `Links.lookup` to the MappingContext.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import IntegrityError, transaction
from django.utils import timezone

from integration.models import CrossRef, update_rows

SIDES = ("salesforce", "kashflow")


class Links:
    def __init__(self) -> None:
        self._refs: dict[tuple[str, str, str], CrossRef] = {}

    def prefetch(self, object_type: str, side: str, keys: Iterable[str]) -> Links:
        """Load the cross-references of `keys` (ids on `side`) for `object_type`."""
        wanted = {str(key) for key in keys if key} - {
            key for (t, s, key) in self._refs if t == object_type and s == side
        }
        if wanted:
            field = "salesforce_id" if side == "salesforce" else "kashflow_key"
            for ref in CrossRef.objects.filter(object_type=object_type, **{f"{field}__in": wanted}):
                self._remember(ref)
        return self

    def _remember(self, ref: CrossRef) -> None:
        if ref.salesforce_id:
            self._refs[(ref.object_type, "salesforce", ref.salesforce_id)] = ref
        if ref.kashflow_key:
            self._refs[(ref.object_type, "kashflow", ref.kashflow_key)] = ref

    def reload(self, object_type: str, side: str, key: str) -> CrossRef | None:
        """Read one cross-reference again, for a decision that must not rest on what the batch
        read at its start: another worker may have linked the record since."""
        field = "salesforce_id" if side == "salesforce" else "kashflow_key"
        self._refs.pop((object_type, side, str(key)), None)
        ref = CrossRef.objects.filter(object_type=object_type, **{field: key}).first()
        if ref is not None:
            self._remember(ref)
        return ref

    def get(self, object_type: str, side: str, key: str | None) -> CrossRef | None:
        if not key:
            return None
        return self._refs.get((object_type, side, str(key)))

    def lookup(self, object_type: str, side: str, key: str) -> str | None:
        """The other side's id for `key` on `side`, or None (the MappingContext's lookup)."""
        ref = self.get(object_type, side, key)
        if ref is None:
            return None
        return ref.kashflow_key if side == "salesforce" else ref.salesforce_id

    def link(
        self, object_type: str, *, salesforce_id: str | None, kashflow_key: str | None
    ) -> CrossRef:
        """Record that these two ids are the same thing (idempotent; fills in a missing side)."""
        ref = self.get(object_type, "salesforce", salesforce_id) or self.get(
            object_type, "kashflow", kashflow_key
        )
        if ref is None:
            ref = _find_or_create(object_type, salesforce_id, kashflow_key)
        changed = False
        if salesforce_id and ref.salesforce_id != salesforce_id:
            ref.salesforce_id, changed = salesforce_id, True
        if kashflow_key and ref.kashflow_key != str(kashflow_key):
            ref.kashflow_key, changed = str(kashflow_key), True
        if changed:
            ref.save()
        self._remember(ref)
        return ref

    def link_many(
        self, object_type: str, pairs: list[tuple[str | None, str | None]]
    ) -> list[CrossRef]:
        """`link` for a batch of (salesforce_id, kashflow_key) pairs, in the pairs' order.

        The cross-references not known yet are read in one query per side and the new ones
        inserted in one statement, instead of two lookups and an insert per pair (the bulk of
        an initial load's time). Should another worker have linked one of them meanwhile, the
        insert fails as a whole and each pair goes the one-at-a-time way of `link`.
        """
        self.prefetch(object_type, "salesforce", [sf for sf, _ in pairs])
        self.prefetch(object_type, "kashflow", [kf for _, kf in pairs])
        new = {
            (sf, str(kf) if kf else None): CrossRef(
                object_type=object_type,
                salesforce_id=sf or None,
                kashflow_key=str(kf) if kf else None,
            )
            for sf, kf in pairs
            if not self.get(object_type, "salesforce", sf)
            and not self.get(object_type, "kashflow", kf)
        }
        if new:
            try:
                with transaction.atomic():
                    created = CrossRef.objects.bulk_create(new.values())
            except IntegrityError:
                created = []
            for ref in created:
                if ref.pk is not None:
                    self._remember(ref)
        return [self.link(object_type, salesforce_id=sf, kashflow_key=kf) for sf, kf in pairs]

    def assume(self, object_type: str, *, salesforce_id: str, kashflow_key: str) -> None:
        """A dry run's link: looked up like a real one, never saved."""
        self._remember(
            CrossRef(
                object_type=object_type, salesforce_id=salesforce_id, kashflow_key=kashflow_key
            )
        )

    def written(self, ref: CrossRef, side: str, payload_hash: str) -> None:
        """Note the hash of the payload just written to `side`: an unchanged record is not
        sent again."""
        now = timezone.now()
        if side == "salesforce":
            ref.salesforce_hash, ref.salesforce_synced_at = payload_hash, now
            CrossRef.objects.filter(pk=ref.pk).update(
                salesforce_hash=payload_hash, salesforce_synced_at=now
            )
        else:
            ref.kashflow_hash, ref.kashflow_synced_at = payload_hash, now
            CrossRef.objects.filter(pk=ref.pk).update(
                kashflow_hash=payload_hash, kashflow_synced_at=now
            )

    def written_many(self, side: str, hashes: list[tuple[CrossRef, str]]) -> None:
        """`written` for a batch of (ref, payload hash) pairs: one UPDATE (`update_rows`)."""
        if not hashes:
            return
        now = timezone.now()
        hash_field, synced_field = f"{side}_hash", f"{side}_synced_at"
        for ref, payload_hash in hashes:
            setattr(ref, hash_field, payload_hash)
            setattr(ref, synced_field, now)
        by_pk = {ref.pk: payload_hash for ref, payload_hash in hashes}
        update_rows(CrossRef.objects.all(), list(by_pk), {hash_field: by_pk}, **{synced_field: now})


def _find_or_create(
    object_type: str, salesforce_id: str | None, kashflow_key: str | None
) -> CrossRef:
    lookups = []
    if salesforce_id:
        lookups.append({"salesforce_id": salesforce_id})
    if kashflow_key:
        lookups.append({"kashflow_key": str(kashflow_key)})
    for lookup in lookups:
        ref = CrossRef.objects.filter(object_type=object_type, **lookup).first()
        if ref:
            return ref
    try:
        with transaction.atomic():
            return CrossRef.objects.create(
                object_type=object_type,
                salesforce_id=salesforce_id or None,
                kashflow_key=str(kashflow_key) if kashflow_key else None,
            )
    except IntegrityError:  # another worker linked it a moment ago
        for lookup in lookups:
            ref = CrossRef.objects.filter(object_type=object_type, **lookup).first()
            if ref:
                return ref
        raise
