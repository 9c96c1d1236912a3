//! DCP flow control, both halves (`mcbp-dcp.md` §7.6). Pure counters: no clock is
//! read here, the caller passes `now`.

use std::time::{Duration, Instant};

/// The producer's view: bytes sent and not yet acknowledged, against the window the
/// consumer advertised with `connection_buffer_size` (0 = flow control off).
#[derive(Debug, Default, Clone)]
pub(crate) struct ProducerWindow {
    size: u64,
    outstanding: u64,
}

impl ProducerWindow {
    /// Sets the window (the control may be re-sent at any time).
    pub(crate) fn set_size(&mut self, size: u32) {
        self.size = u64::from(size);
    }

    /// Whether one more stream message may go out: flow control is off or the
    /// outstanding bytes are below the window. The last message may overshoot.
    pub(crate) fn may_send(&self) -> bool {
        self.size == 0 || self.outstanding < self.size
    }

    /// A stream message of `bytes` (its flow-control size) was queued for sending.
    pub(crate) fn sent(&mut self, bytes: usize) {
        if self.size > 0 {
            self.outstanding = self.outstanding.saturating_add(bytes as u64);
        }
    }

    /// A BUFFER_ACK arrived.
    pub(crate) fn acked(&mut self, bytes: u32) {
        self.outstanding = self.outstanding.saturating_sub(u64::from(bytes));
    }

    /// Bytes sent and not acknowledged.
    pub(crate) fn outstanding(&self) -> u64 {
        self.outstanding
    }

    /// The window (0 = off).
    pub(crate) fn size(&self) -> u64 {
        self.size
    }
}

/// The consumer's view: bytes processed and not yet acknowledged. An ack goes out
/// when they exceed 20 % of the buffer or when `interval` passed since the last ack
/// with anything pending (kv_engine: 5 s). Every byte is acknowledged exactly once.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerAcker {
    buffer: u64,
    unacked: u64,
    last_ack: Instant,
    interval: Duration,
}

impl ConsumerAcker {
    pub(crate) fn new(now: Instant, interval: Duration) -> ConsumerAcker {
        ConsumerAcker {
            buffer: 0,
            unacked: 0,
            last_ack: now,
            interval,
        }
    }

    /// The producer accepted our `connection_buffer_size`; acks start.
    pub(crate) fn enable(&mut self, buffer: u32) {
        self.buffer = u64::from(buffer);
    }

    /// Whether acks are sent at all.
    pub(crate) fn enabled(&self) -> bool {
        self.buffer > 0
    }

    /// A stream message of `bytes` was processed (or dropped: dropped bytes are
    /// freed too, MB-56275).
    pub(crate) fn processed(&mut self, bytes: usize) {
        self.unacked = self.unacked.saturating_add(bytes as u64);
    }

    /// Bytes processed and not acknowledged.
    pub(crate) fn unacked(&self) -> u64 {
        self.unacked
    }

    /// The amount to acknowledge now, if any: over 20 % of the buffer, or anything
    /// after the interval.
    pub(crate) fn take_ack(&mut self, now: Instant) -> Option<u32> {
        if !self.enabled() || self.unacked == 0 {
            return None;
        }
        let due = self.unacked * 5 > self.buffer
            || now.saturating_duration_since(self.last_ack) >= self.interval;
        if !due {
            return None;
        }
        let n = u32::try_from(self.unacked).unwrap_or(u32::MAX);
        self.unacked -= u64::from(n);
        self.last_ack = now;
        Some(n)
    }

    /// When the periodic ack falls due, if anything is pending.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        (self.enabled() && self.unacked > 0).then(|| self.last_ack + self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// §7.6: send while outstanding < N, so the last message may overshoot.
    #[test]
    fn producer_window_pauses_at_the_buffer_size_and_resumes_on_ack() {
        let mut w = ProducerWindow::default();
        assert!(w.may_send());
        w.sent(1000);
        assert_eq!(w.outstanding(), 0, "flow control off counts nothing");
        w.set_size(100);
        w.sent(60);
        assert!(w.may_send());
        w.sent(60);
        assert!(!w.may_send());
        w.acked(30);
        assert!(w.may_send());
        w.acked(1000);
        assert_eq!(w.outstanding(), 0);
    }

    /// §7.6: ack when freed bytes exceed 20 % of N, or after the interval.
    #[test]
    fn consumer_acks_over_twenty_percent_or_after_the_interval_and_never_twice() {
        let t0 = Instant::now();
        let mut a = ConsumerAcker::new(t0, Duration::from_secs(5));
        a.processed(500);
        assert_eq!(a.take_ack(t0), None, "no buffer size negotiated yet");
        a.enable(1000);
        assert_eq!(a.take_ack(t0), Some(500), "50 % of the buffer is over 20 %");
        let mut b = ConsumerAcker::new(t0, Duration::from_secs(5));
        b.enable(1000);
        b.processed(100);
        assert_eq!(b.take_ack(t0), None);
        assert_eq!(b.deadline(), Some(t0 + Duration::from_secs(5)));
        b.processed(150);
        assert_eq!(b.take_ack(t0), Some(250));
        assert_eq!(b.take_ack(t0), None);
        b.processed(10);
        assert_eq!(b.take_ack(t0 + Duration::from_secs(5)), Some(10));
        assert_eq!(b.unacked(), 0);
    }
}
