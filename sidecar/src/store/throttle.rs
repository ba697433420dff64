//! Keeps the record of secret use cheap: an issuer writes when a secret was
//! last accepted at most once per window and secret, not once per token
//! request.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// When each secret's use was last written, by secret hash (a hash of 256
/// random bits names one secret of one client, so it is key enough).
pub struct Throttle {
    window: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    written: HashMap<String, u64>,
    /// Entries past their window are swept once the map has doubled, so
    /// memory stays bounded by the secrets used within a window.
    sweep_at: usize,
}

impl Throttle {
    /// At most one write per `window` seconds and secret.
    pub fn new(window: u64) -> Self {
        Self { window, state: Mutex::default() }
    }

    /// Whether a use of `secret_hash` at `now` is to be written: the first
    /// of its window. Counts it as written.
    pub fn due(&self, secret_hash: &str, now: u64) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.written.get(secret_hash).is_some_and(|at| now < at + self.window) {
            return false;
        }
        state.written.insert(secret_hash.to_owned(), now);
        if state.written.len() > state.sweep_at {
            state.written.retain(|_, at| now < *at + self.window);
            state.sweep_at = (state.written.len() * 2).max(1024);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_write_per_window_and_secret() {
        let throttle = Throttle::new(60);
        assert!(throttle.due("a", 1000));
        assert!(!throttle.due("a", 1059), "within the window");
        assert!(throttle.due("b", 1059), "another secret has its own window");
        assert!(throttle.due("a", 1060), "the next window");
        assert!(!throttle.due("a", 1061));
    }

    #[test]
    fn entries_past_their_window_are_swept_as_the_map_grows() {
        let throttle = Throttle::new(60);
        for i in 0..1500 {
            throttle.due(&format!("early-{i}"), 0);
        }
        for i in 0..600 {
            throttle.due(&format!("late-{i}"), 60);
        }
        let state = throttle.state.lock().unwrap();
        assert!(state.written.len() <= 600, "{} entries kept", state.written.len());
        assert!(state.written.values().all(|at| *at == 60), "only the current window's");
    }
}
