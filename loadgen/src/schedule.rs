//! The open-loop send schedule: when each request is *intended* to be sent.
//!
//! Times are computed from one absolute start instant, never by sleeping an interval after each
//! send, so the schedule cannot drift: request `j` of a constant-rate run is due at
//! `start + j / rate`, whatever happened to request `j - 1`. With `T` generator threads, thread
//! `k` owns requests `k, k + T, k + 2T, …` of the global sequence, so the union over threads is
//! exactly the global constant-rate schedule. Poisson arrivals accumulate exponential gaps (in
//! `f64` nanoseconds from the start, so rounding does not accumulate either); each thread runs an
//! independent Poisson process at `rate / T`, whose superposition is Poisson at `rate`.

use std::time::{Duration, Instant};

/// Largest offset from the start a schedule produces (1e18 ns, ~31 years).
const MAX_OFFSET_NS: u64 = 1_000_000_000_000_000_000;

/// Inter-arrival distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Evenly spaced requests.
    Constant,
    /// Exponentially distributed gaps (a Poisson process), seeded.
    Poisson,
}

/// One thread's share of the global schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    start: Instant,
    arrival: Arrival,
    /// Global rate in requests per second.
    rate: f64,
    threads: u64,
    thread: u64,
    /// Index of the next request within this thread's share.
    i: u64,
    /// Poisson only: offset of the next request from `start`, in nanoseconds.
    poisson_ns: f64,
    rng: XorShift,
}

impl Schedule {
    /// Schedule for thread `thread` of `threads`, at a global `rate` (> 0) starting at `start`.
    pub fn new(start: Instant, arrival: Arrival, rate: f64, threads: usize, thread: usize, seed: u64) -> Self {
        let mut s = Self {
            start,
            arrival,
            rate,
            threads: threads.max(1) as u64,
            thread: thread as u64,
            i: 0,
            poisson_ns: 0.0,
            rng: XorShift::new(seed ^ (thread as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        };
        if arrival == Arrival::Poisson {
            s.poisson_ns = s.exp_gap_ns();
        }
        s
    }

    /// Offset from `start` of global request number `j` at a constant rate (capped at ~31
    /// years, far past any run, so adding it to an `Instant` cannot overflow).
    pub fn constant_offset(rate: f64, j: u64) -> Duration {
        Duration::from_nanos(((j as f64 * 1e9 / rate) as u64).min(MAX_OFFSET_NS))
    }

    /// Intended send time of this thread's next request.
    pub fn peek(&self) -> Instant {
        match self.arrival {
            Arrival::Constant => {
                let j = self.thread + self.i * self.threads;
                self.start + Self::constant_offset(self.rate, j)
            }
            Arrival::Poisson => self.start + Duration::from_nanos((self.poisson_ns as u64).min(MAX_OFFSET_NS)),
        }
    }

    /// Moves on to the next request.
    pub fn advance(&mut self) {
        self.i += 1;
        if self.arrival == Arrival::Poisson {
            self.poisson_ns += self.exp_gap_ns();
        }
    }

    /// An exponential gap at this thread's rate (`rate / threads`).
    fn exp_gap_ns(&mut self) -> f64 {
        let per_thread = self.rate / self.threads as f64;
        // u in (0, 1]: never ln(0).
        let u = 1.0 - self.rng.next_f64();
        -u.ln() * 1e9 / per_thread
    }
}

/// xorshift64*: a tiny, fast, seedable generator; statistical quality is ample for arrival gaps.
#[derive(Clone, Debug)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // Zero is a fixed point of xorshift; any other value works.
        Self(if seed == 0 { 0x2545_F491_4F6C_DD1D } else { seed })
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // reason: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn constant_schedule_is_absolute_and_does_not_drift() {
        let start = Instant::now();
        let mut s = Schedule::new(start, Arrival::Constant, 3000.0, 1, 0, 1);
        // 1/3000 s is not a whole number of nanoseconds: summing intervals would drift.
        for _ in 0..3_000_000 {
            s.advance();
        }
        assert_eq!(s.peek() - start, Duration::from_secs(1000));
    }

    #[test]
    fn threads_interleave_into_the_global_schedule() {
        let start = Instant::now();
        let mut all = Vec::new();
        for k in 0..3 {
            let mut s = Schedule::new(start, Arrival::Constant, 1000.0, 3, k, 1);
            for _ in 0..10 {
                all.push(s.peek() - start);
                s.advance();
            }
        }
        all.sort();
        let want: Vec<_> = (0..30).map(Duration::from_millis).collect();
        assert_eq!(all, want);
    }

    #[test]
    fn poisson_mean_rate_is_close_and_seeded() {
        let start = Instant::now();
        let mut s = Schedule::new(start, Arrival::Poisson, 10_000.0, 2, 1, 42);
        let mut prev = s.peek();
        let mut t = Schedule::new(start, Arrival::Poisson, 10_000.0, 2, 1, 42);
        for _ in 0..100_000 {
            assert_eq!(s.peek(), t.peek(), "same seed, same schedule");
            assert!(s.peek() >= prev, "monotonic");
            prev = s.peek();
            s.advance();
            t.advance();
        }
        // 100k requests at 5k/s per thread: ~20 s, within 2 %.
        let secs = (s.peek() - start).as_secs_f64();
        assert!((secs - 20.0).abs() < 0.4, "{secs}");
    }
}
