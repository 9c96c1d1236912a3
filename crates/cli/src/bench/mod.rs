//! `conduit bench …`: throughput and latency measurements. Results are printed as one
//! JSON line; `docs/BENCHMARKS.md` records them with the commands that produced them.

pub(crate) mod dcp;
mod fake;
pub(crate) mod kv;
mod nodes;
pub(crate) mod proxy;
pub(crate) mod rebalance;
pub(crate) mod replication;

/// Percentile of sorted samples (nearest rank).
pub(crate) fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Rounded to three decimals, for JSON output.
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The vbucket a key maps to: `((crc32(key) >> 16) & 0x7fff) % n` (the SDK's rule).
pub(crate) fn vbucket_of(key: &[u8], n: u16) -> u16 {
    if n == 0 {
        return 0;
    }
    let h = (crc32fast::hash(key) >> 16) & 0x7fff;
    (h % u32::from(n)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn key_hash_matches_the_sdk_rule() {
        // crc32("doc-00000") = 0x7bdf5c6b... checked against sdk-compat §11: vb 991 of 1024.
        assert_eq!(vbucket_of(b"doc-00000", 1024), 991);
        assert_eq!(vbucket_of(b"doc-00001", 1024), 216);
    }
}
