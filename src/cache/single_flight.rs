//! One in-flight computation per key: the first caller starts it as its own
//! task, later callers with the same key wait for the same result. Because
//! the work is a spawned task, a caller that goes away (a client hanging up)
//! cancels nothing for the others.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;

type Flight<V> = Shared<BoxFuture<'static, V>>;

pub struct SingleFlight<K, V: Clone> {
    inflight: Arc<Mutex<HashMap<K, Flight<V>>>>,
}

impl<K, V> SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub fn new() -> Self {
        SingleFlight {
            inflight: Arc::new(Mutex::new(HashMap::new())),
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
                let table = self.inflight.clone();
                let task_key = key.clone();
                let fut = work();
                let handle = tokio::spawn(async move {
                    let value = fut.await;
                    table.lock().remove(&task_key);
                    value
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

    pub fn in_flight(&self) -> usize {
        self.inflight.lock().len()
    }
}

impl<K, V> Default for SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run_and_the_key_is_freed() {
        let flights: Arc<SingleFlight<&str, u32>> = Arc::new(SingleFlight::new());
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
    async fn a_caller_that_goes_away_does_not_cancel_the_work() {
        let flights: Arc<SingleFlight<u8, u8>> = Arc::new(SingleFlight::new());
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
