"""What a hostile user or an unlucky day does to a PostgreSQL registry: malformed URLs and
passwords that must never show, servers restarted under long-lived processes, odd settings.
Each test was a defect once; all run against a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from media_registry import MediaRegistry

import registry_db
from conftest import PNG


def test_stats_counts_each_phone_numbers_live_expiring_and_expired_ids(
    make_registry: Callable[..., MediaRegistry], make_file: Callable[..., Path], registry_db_value: str,
) -> None:
    registry = make_registry()
    for name in ("a.png", "b.png", "c.png"):
        registry.get_or_upload(make_file(name, PNG))
    registry_db.execute(registry_db_value, "UPDATE media SET expires_at = ? WHERE media_id IN "
                        "(SELECT media_id FROM media ORDER BY media_id LIMIT 1)",
                        registry_db.stamp(datetime.now(timezone.utc)))
    stats = registry.stats()
    assert stats["by_phone_number"] == {
        registry.settings.phone_number_id: {"live_ids": 2, "expiring_ids": 0, "expired_ids": 1}
    }
