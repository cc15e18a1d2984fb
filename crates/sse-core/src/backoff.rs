//! Reconnection delays: exponential from `min` to `max`, with jitter so that
//! the workers of many nginx instances do not reconnect to a recovering Redis
//! in lockstep.

#[derive(Debug, Clone)]
pub struct Backoff {
    min_ms: u64,
    max_ms: u64,
    next_ms: u64,
}

impl Backoff {
    pub fn new(min_ms: u64, max_ms: u64) -> Self {
        Backoff {
            min_ms,
            max_ms,
            next_ms: min_ms,
        }
    }

    /// The delay before the next attempt. `random` is any random number; the
    /// delay is spread over [d/2, d] of the nominal delay d.
    pub fn next_delay(&mut self, random: u64) -> u64 {
        let nominal = self.next_ms;
        self.next_ms = (self.next_ms * 2).min(self.max_ms);
        let half = nominal / 2;
        half + random % (nominal - half + 1)
    }

    /// Called once a connection works again.
    pub fn reset(&mut self) {
        self.next_ms = self.min_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(100, 1000);
        let nominal: Vec<u64> = (0..6).map(|_| b.next_delay(u64::MAX)).collect();
        // random = MAX gives some point in [d/2, d]; check bounds instead.
        let mut b2 = Backoff::new(100, 1000);
        for (i, d) in [100u64, 200, 400, 800, 1000, 1000].iter().enumerate() {
            let got = b2.next_delay(i as u64 * 7919);
            assert!(got >= d / 2 && got <= *d, "{got} vs {d}");
        }
        assert!(nominal.iter().all(|&d| d <= 1000));
        b.reset();
        assert!(b.next_delay(0) <= 100);
    }
}
