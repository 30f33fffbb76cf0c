//! The per-connection rate limit: a token bucket refilled continuously, checked once per
//! client command (`rate_limited` when empty).

use std::time::Instant;

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
pub(super) struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    pub(super) fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            tokens: burst,
            rate,
            burst,
            last: Instant::now(),
        }
    }

    pub(super) fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_rate_holds() {
        let mut b = TokenBucket::new(0.0, 3);
        assert!(b.take() && b.take() && b.take());
        assert!(!b.take(), "no refill at rate 0: the burst is all there is");
    }
}
