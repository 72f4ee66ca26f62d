//! Many small vault requests at once.
//!
//! A cycle stores and fetches many small objects (map pages, pack indexes).
//! Each durable `put` on a local directory is a write, an fsync, a rename and
//! a directory fsync; each `get` from a cold cache is a disk read. Issued one
//! at a time their latencies add up; issued together the filesystem batches
//! the journal commits (ext4 group commit) and the device queues the reads,
//! and an object store would overlap the round trips the same way.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Requests in flight at once.
pub const IO_THREADS: usize = 16;

/// Applies `f` to every item on up to [`IO_THREADS`] threads and returns the
/// results in the items' order, or the error of the first item (in order)
/// that failed. Every item is attempted.
pub fn map<T: Sync, R: Send, E: Send>(items: &[T], f: impl Fn(&T) -> Result<R, E> + Sync) -> Result<Vec<R>, E> {
    if items.len() <= 1 {
        return items.iter().map(&f).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<Result<R, E>>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..IO_THREADS.min(items.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { return };
                let r = f(item);
                *results[i].lock().expect("result slot") = Some(r);
            });
        }
    });
    results.into_iter().map(|m| m.into_inner().expect("result slot").expect("every item was run")).collect()
}

#[cfg(test)]
mod tests {
    use super::map;

    #[test]
    fn results_come_back_in_order_and_the_first_error_wins() {
        let items: Vec<u32> = (0..100).collect();
        assert_eq!(map(&items, |&i| Ok::<_, ()>(i * 2)).unwrap(), (0..100).map(|i| i * 2).collect::<Vec<_>>());
        let r = map(&items, |&i| if i % 10 == 7 { Err(i) } else { Ok(i) });
        assert_eq!(r, Err(7));
        assert_eq!(map(&[] as &[u32], |&i| Ok::<_, ()>(i)).unwrap(), Vec::<u32>::new());
    }
}
