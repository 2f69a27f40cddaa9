//! The timeout guard of the tests that exercise shutdown, shared by both test binaries
//! (`tests/tests.rs` and `tests/curated/main.rs`, which includes this file by path).
use std::time::Duration;

/// Runs `f` on a thread and fails the test if it has not finished within `limit`: a test of
/// shutdown must fail, not hang.
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("did not finish within {limit:?}"))
}
