//! Change notifications for connections (PostgreSQL LISTEN/NOTIFY), for in-memory caches.
//!
//! A trigger announces every update or deletion of a connection on commit. [`listen`] keeps a
//! dedicated connection listening, reconnecting with backoff; after any gap it sends
//! [`Change::Resync`], because notifications sent while it was away are lost.

use super::{pg_config, StoreError};
use futures_util::StreamExt;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, NoTls};

pub const CHANNEL: &str = "authbridge_connections";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This connection changed or was deleted.
    Connection { provider: String, connection_id: String },
    /// Listening (re)started: anything cached before may be stale.
    Resync,
    /// Not listening: do not trust the cache until the next `Resync`.
    Lost,
}

async fn listen_once(
    url: &str,
    tx: &mpsc::UnboundedSender<Change>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let (client, mut conn) = pg_config(url)?.connect(NoTls).await?;
    let (msg_tx, mut msg_rx) = mpsc::unbounded_channel();
    // The connection must be polled for the LISTEN to complete and for notifications to arrive.
    let pump = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if msg_tx.send(n.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    let _ = tx.send(Change::Resync);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            m = msg_rx.recv() => match m {
                Some(payload) => {
                    if let Some((p, c)) = payload.split_once('/') {
                        let _ = tx.send(Change::Connection { provider: p.to_owned(), connection_id: c.to_owned() });
                    }
                }
                None => break,
            }
        }
    }
    pump.abort();
    Ok(())
}

/// Listens until `shutdown`; every change, gap and recovery goes to `tx`.
pub async fn listen(url: String, tx: mpsc::UnboundedSender<Change>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(200);
    while !*shutdown.borrow() {
        let result = listen_once(&url, &tx, &mut shutdown).await;
        if *shutdown.borrow() {
            break;
        }
        let _ = tx.send(Change::Lost);
        match result {
            Ok(()) => tracing::warn!("connection change notifications stopped; reconnecting"),
            Err(e) => tracing::warn!(error = %e, "cannot listen for connection changes; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => break,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
