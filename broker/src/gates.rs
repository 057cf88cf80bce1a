//! Per-topic gates for loading topics: loads of one topic queue behind each
//! other, so its log is never opened twice, while loads of different topics
//! run side by side (a restarting broker reopens many at once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

type Gate = Arc<tokio::sync::Mutex<()>>;

/// The gates of the topics being loaded now; a topic's entry goes once no
/// load holds or waits on it.
#[derive(Debug, Default)]
pub(crate) struct LoadGates {
    gates: Mutex<HashMap<String, Gate>>,
}

impl LoadGates {
    /// Waits for the loads of `topic` before this one, and holds the gate
    /// until the returned pass is dropped.
    pub(crate) async fn enter(&self, topic: &str) -> LoadPass<'_> {
        let gate = Arc::clone(self.lock().entry(topic.to_owned()).or_default());
        let held = Arc::clone(&gate).lock_owned().await;
        LoadPass {
            gates: self,
            topic: topic.to_owned(),
            gate,
            _held: held,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Gate>> {
        self.gates.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// One load's hold on its topic's gate.
#[derive(Debug)]
pub(crate) struct LoadPass<'a> {
    gates: &'a LoadGates,
    topic: String,
    gate: Gate,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for LoadPass<'_> {
    fn drop(&mut self) {
        // Waiters clone the gate under the map's lock, so with only the
        // map's, this pass's and the held guard's counts left, none waits:
        // a later load makes a new gate, and two never exist at once.
        let mut gates = self.gates.lock();
        if Arc::strong_count(&self.gate) == 3 {
            gates.remove(&self.topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn loads_of_one_topic_wait_for_each_other() {
        let gates = Arc::new(LoadGates::default());
        let first = gates.enter("/default/a").await;

        let waiting = {
            let gates = Arc::clone(&gates);
            tokio::spawn(async move {
                let _pass = gates.enter("/default/a").await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());

        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the second load enters once the first leaves")
            .unwrap();
        assert_eq!(gates.len(), 0);
    }

    #[tokio::test]
    async fn loads_of_different_topics_run_at_once() {
        let gates = LoadGates::default();
        let a = gates.enter("/default/a").await;

        let b = tokio::time::timeout(Duration::from_secs(5), gates.enter("/default/b"))
            .await
            .expect("another topic's gate is free");

        assert_eq!(gates.len(), 2);
        drop((a, b));
        assert_eq!(gates.len(), 0);
    }

    #[tokio::test]
    async fn a_load_dropped_while_waiting_leaves_the_gate_to_the_others() {
        let gates = LoadGates::default();
        let first = gates.enter("/default/a").await;
        let abandoned = tokio::time::timeout(Duration::from_millis(20), gates.enter("/default/a"));
        assert!(abandoned.await.is_err());

        drop(first);
        let again = tokio::time::timeout(Duration::from_secs(5), gates.enter("/default/a"))
            .await
            .expect("the gate is free again");
        drop(again);
        assert_eq!(gates.len(), 0);
    }
}
