//! The per-thread cache of live workflow instances (Temporal's sticky cache): bounded, least
//! recently used idle instances are evicted. Eviction only drops the instance; the run keeps its
//! history and its effects (running activities, timers) and rebuilds the instance by replay when
//! its next fact arrives.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use tokio::sync::Notify;

struct Entry {
    tick: u64,
    evict: Rc<Notify>,
}

#[derive(Default)]
struct Cache {
    tick: u64,
    entries: HashMap<String, Entry>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// Marks `run_id`'s instance as just used; evicts the least recently used others beyond `cap`.
pub(crate) fn touch(run_id: &str, evict: &Rc<Notify>, cap: usize) {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        c.tick += 1;
        let tick = c.tick;
        c.entries.insert(
            run_id.to_string(),
            Entry {
                tick,
                evict: evict.clone(),
            },
        );
        while c.entries.len() > cap.max(1) {
            let Some(oldest) = c
                .entries
                .iter()
                .filter(|(id, _)| id.as_str() != run_id)
                .min_by_key(|(_, e)| e.tick)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            if let Some(e) = c.entries.remove(&oldest) {
                e.evict.notify_one();
            }
        }
    });
}

/// Forgets `run_id` (its instance was dropped or the run ended).
pub(crate) fn forget(run_id: &str) {
    CACHE.with(|c| {
        c.borrow_mut().entries.remove(run_id);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_is_evicted() {
        let a = Rc::new(Notify::new());
        let b = Rc::new(Notify::new());
        let c = Rc::new(Notify::new());
        touch("a", &a, 2);
        touch("b", &b, 2);
        touch("a", &a, 2);
        touch("c", &c, 2);
        // b was least recently used: it holds a permit now.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_millis(50), b.notified())
                .await
                .unwrap();
            assert!(
                tokio::time::timeout(std::time::Duration::from_millis(20), a.notified())
                    .await
                    .is_err()
            );
        });
        forget("a");
        forget("c");
    }
}
