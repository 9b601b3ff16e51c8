//! What the crate's unit tests share.

/// Runs `f` as a worker does: a single-threaded runtime with a `LocalSet`.
pub fn run(f: impl std::future::Future<Output = ()>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f);
}

/// A small deterministic random source (xorshift64) for property tests, so they need no
/// dependency and every failure reproduces: `next(n)` is in `0..n` (0 when `n` is 0).
pub fn random(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |n| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n.max(1)
    }
}
