//! What the crate's unit tests share.

/// Runs `f` as a worker does: a single-threaded runtime with a `LocalSet`.
pub fn run(f: impl std::future::Future<Output = ()>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f);
}
