//! What survives a restart of the demo provider: the tokens it issued, with expiry as
//! wall-clock time, so connections made before keep refreshing (`authbridge dev` saves and
//! restores it).

use super::{AccessToken, MockState, RefreshToken};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// The tokens a provider issued.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    /// access token → (family, expiry in Unix seconds)
    pub access: Vec<(String, u64, i64)>,
    /// refresh token → (client id, family, scope, used)
    pub refresh: Vec<(String, String, u64, String, bool)>,
    pub revoked_families: Vec<u64>,
    pub next_family: u64,
}

/// An instant as Unix seconds (whole seconds: a snapshot of an unchanged state is the same).
fn to_wall(t: Instant) -> i64 {
    let (wall, now) = (chrono::Utc::now().timestamp_millis(), Instant::now());
    let ms = match t.checked_duration_since(now) {
        Some(ahead) => wall + ahead.as_millis() as i64,
        None => wall - now.duration_since(t).as_millis() as i64,
    };
    (ms + 500).div_euclid(1000)
}

fn from_wall(secs: i64) -> Instant {
    let (wall, now) = (chrono::Utc::now().timestamp_millis(), Instant::now());
    let ms = secs.saturating_mul(1000);
    let delta = Duration::from_millis(ms.abs_diff(wall));
    if ms >= wall {
        now + delta
    } else {
        now.checked_sub(delta).unwrap_or(now)
    }
}

impl MockState {
    /// The tokens issued so far, to be restored after a restart ([`MockState::restore`]).
    pub fn snapshot(&self) -> Snapshot {
        let g = self.0.lock().unwrap();
        let mut s = Snapshot {
            access: g.access.iter().map(|(k, t)| (k.clone(), t.family, to_wall(t.expires))).collect(),
            refresh: g
                .refresh
                .iter()
                .map(|(k, r)| (k.clone(), r.client_id.clone(), r.family, r.scope.clone(), r.used))
                .collect(),
            revoked_families: g.revoked_families.iter().copied().collect(),
            next_family: g.next_family,
        };
        // Stable order: an unchanged state gives the same bytes (the saver writes only changes).
        s.access.sort();
        s.refresh.sort();
        s.revoked_families.sort_unstable();
        s
    }

    /// Takes back the tokens of a [`Snapshot`], beside any issued since start.
    pub fn restore(&self, s: Snapshot) {
        let mut g = self.0.lock().unwrap();
        for (token, family, expires) in s.access {
            let expires = from_wall(expires);
            let latest = g.family_expiry.entry(family).or_insert(expires);
            *latest = (*latest).max(expires);
            g.access.insert(token, AccessToken { expires, family });
        }
        for (token, client_id, family, scope, used) in s.refresh {
            g.refresh.insert(token, RefreshToken { client_id, family, scope, used, used_at: None });
        }
        g.revoked_families.extend(s.revoked_families);
        g.next_family = g.next_family.max(s.next_family);
    }
}
