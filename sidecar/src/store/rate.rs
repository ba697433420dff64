//! GCRA (generic cell rate algorithm): one number per subject, the
//! theoretical arrival time of its next request. A request is allowed when
//! that time is at most `burst` intervals ahead of now. The Redis store
//! runs the same algorithm in Lua (`redis/lua/gcra.lua`).

use std::time::Duration;

use super::Rate;

/// Milliseconds between requests at the sustained rate.
pub fn interval_ms(rate: Rate) -> f64 {
    1000.0 / f64::from(rate.per_second)
}

/// Given the stored arrival time (ms, `None` when fresh) and now, returns
/// the new arrival time to store, or how long to wait.
pub fn admit(tat: Option<f64>, now: f64, rate: Rate) -> Result<f64, Duration> {
    let interval = interval_ms(rate);
    let start = tat.unwrap_or(now).max(now);
    // Compared before adding the interval: `now + interval - now` can round
    // above `interval` and refuse a fresh subject its only slot.
    let over = start - now - interval * f64::from(rate.burst.saturating_sub(1));
    if over > 0.0 { Err(Duration::from_secs_f64(over / 1000.0)) } else { Ok(start + interval) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_sustained_rate() {
        let rate = Rate { per_second: 10, burst: 3 };
        let mut tat = None;
        for _ in 0..3 {
            tat = Some(admit(tat, 0.0, rate).expect("within the burst"));
        }
        let wait = admit(tat, 0.0, rate).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100), "one interval until the next slot");
        assert!(admit(tat, 100.0, rate).is_ok(), "one slot frees per interval");
        assert!(admit(tat, 5_000.0, rate).is_ok(), "an idle subject starts fresh");
    }

    #[test]
    fn a_fresh_subject_gets_its_single_slot_at_any_time() {
        let single = Rate { per_second: 1, burst: 1 };
        // (44.630886252028525 + 1000) - 44.630886252028525 rounds above 1000.
        let now = 44.630886252028525;
        let tat = admit(None, now, single).expect("a fresh subject has one slot");
        assert_eq!(admit(Some(tat), now, single), Err(Duration::from_secs(1)));
    }
}
