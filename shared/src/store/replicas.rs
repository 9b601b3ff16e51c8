//! Replica heartbeats: each replica of a service writes its row every few seconds; the rows
//! seen recently are the live replicas. A replica that stops deletes its row; one that dies
//! drops out when its heartbeat is older than the window.

use super::{Store, StoreError};
use std::time::Duration;

impl Store {
    /// Records that replica `id` of `service` is alive, forgets replicas silent for longer
    /// than `window` (any replica may: one of them is always alive to do it) and returns how
    /// many are alive, this one included.
    pub async fn heartbeat(&self, service: &str, id: &str, window: Duration) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let stmt = client
            .prepare_cached(
                "WITH beat AS (
                    INSERT INTO replicas (service, id, seen_at) VALUES ($1, $2, now())
                    ON CONFLICT (service, id) DO UPDATE SET seen_at = now()
                 ), gone AS (
                    DELETE FROM replicas WHERE service = $1 AND id <> $2
                        AND seen_at < now() - make_interval(secs => $3::bigint / 1000.0)
                 )
                 SELECT count(*) FROM replicas
                  WHERE service = $1 AND id <> $2 AND seen_at >= now() - make_interval(secs => $3::bigint / 1000.0)",
            )
            .await?;
        let others: i64 = client.query_one(&stmt, &[&service, &id, &window_ms]).await?.get(0);
        Ok(others as usize + 1)
    }

    /// Removes replica `id`'s row (a clean stop).
    pub async fn leave(&self, service: &str, id: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.execute("DELETE FROM replicas WHERE service = $1 AND id = $2", &[&service, &id]).await?;
        Ok(())
    }
}
