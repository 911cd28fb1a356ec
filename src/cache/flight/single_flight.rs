//! One in-flight computation per key: the first caller starts it as its own
//! task, later callers with the same key wait for the same result. Because
//! the work is a spawned task, a caller that goes away (a client hanging up)
//! cancels nothing for the others. The key is freed by a drop guard inside
//! the task, so a flight that panics or is cancelled frees it too, and the
//! next caller runs a fresh one.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use tokio_util::task::TaskTracker;

type Flight<V> = Shared<BoxFuture<'static, V>>;
type Table<K, V> = Arc<Mutex<HashMap<K, Flight<V>>>>;

pub struct SingleFlight<K, V: Clone> {
    inflight: Table<K, V>,
    /// Every flight task, so shutdown can wait for them.
    tasks: TaskTracker,
}

/// A second handle on the same flights (a background caller joins them).
impl<K, V: Clone> Clone for SingleFlight<K, V> {
    fn clone(&self) -> Self {
        SingleFlight {
            inflight: self.inflight.clone(),
            tasks: self.tasks.clone(),
        }
    }
}

/// Frees a flight's key however its task ends.
struct Release<K: Eq + Hash, V: Clone> {
    table: Table<K, V>,
    key: Option<K>,
}

impl<K: Eq + Hash, V: Clone> Drop for Release<K, V> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.table.lock().remove(&key);
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub fn new(tasks: TaskTracker) -> Self {
        SingleFlight {
            inflight: Arc::new(Mutex::new(HashMap::new())),
            tasks,
        }
    }

    /// Runs `work()` unless a flight for `key` is already up, and returns
    /// its result, with `true` when this call joined someone else's flight.
    /// `on_panic` turns a panicked task into a value for the waiters.
    pub async fn run<F>(&self, key: K, work: impl FnOnce() -> F, on_panic: fn() -> V) -> (V, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (flight, joined) = {
            let mut inflight = self.inflight.lock();
            if let Some(f) = inflight.get(&key) {
                (f.clone(), true)
            } else {
                // The table is locked until the flight is in it, so the
                // guard cannot run before the insert.
                let release = Release {
                    table: self.inflight.clone(),
                    key: Some(key.clone()),
                };
                let fut = work();
                let handle = self.tasks.spawn(async move {
                    let _release = release;
                    fut.await
                });
                let flight = async move { handle.await.unwrap_or_else(|_| on_panic()) }
                    .boxed()
                    .shared();
                inflight.insert(key, flight.clone());
                (flight, false)
            }
        };
        (flight.await, joined)
    }

    /// The tracker flights run on, for work that starts one in the
    /// background.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    pub fn in_flight(&self) -> usize {
        self.inflight.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run_and_the_key_is_freed() {
        let flights: Arc<SingleFlight<&str, u32>> = Arc::new(SingleFlight::new(TaskTracker::new()));
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let flights = flights.clone();
            let runs = runs.clone();
            tasks.push(tokio::spawn(async move {
                flights
                    .run(
                        "k",
                        move || async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            7
                        },
                        || 0,
                    )
                    .await
            }));
        }
        let mut joined = 0;
        for t in tasks {
            let (v, j) = t.await.unwrap();
            assert_eq!(v, 7);
            joined += j as usize;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(joined, 9);
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_panicking_flight_frees_its_key_for_a_fresh_one() {
        let flights: SingleFlight<u8, u8> = SingleFlight::new(TaskTracker::new());
        let (v, _) = flights
            .run(1, || async { panic!("flight panics (test)") }, || 99)
            .await;
        assert_eq!(v, 99, "the waiters get the panic value");
        assert_eq!(flights.in_flight(), 0, "the key is free again");
        let (v, joined) = flights.run(1, || async { 5 }, || 99).await;
        assert_eq!(
            (v, joined),
            (5, false),
            "the next request runs a fresh flight"
        );
    }

    #[tokio::test]
    async fn flights_are_tracked_until_they_end() {
        let tasks = TaskTracker::new();
        let flights: Arc<SingleFlight<u8, u8>> = Arc::new(SingleFlight::new(tasks.clone()));
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let f = flights.clone();
        let waiter = tokio::spawn(async move {
            f.run(
                1,
                move || async move {
                    let _ = started_tx.send(());
                    let _ = released.await;
                    1
                },
                || 0,
            )
            .await
        });
        started.await.unwrap();
        tasks.close();
        assert_eq!(tasks.len(), 1, "the running flight is tracked");
        assert!(
            tokio::time::timeout(Duration::from_millis(20), tasks.wait())
                .await
                .is_err(),
            "the tracker waits for it"
        );
        release.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .unwrap();
        assert_eq!(waiter.await.unwrap(), (1, false));
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_does_not_cancel_the_work() {
        let flights: Arc<SingleFlight<u8, u8>> = Arc::new(SingleFlight::new(TaskTracker::new()));
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let first = tokio::spawn({
            let flights = flights.clone();
            async move {
                flights
                    .run(
                        1,
                        move || async move {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            d.fetch_add(1, Ordering::SeqCst);
                            1
                        },
                        || 0,
                    )
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        first.abort();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }
}
