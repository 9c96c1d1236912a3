//! The records the log stores (see `logstore` for the file around them): an item
//! version and a vbucket's state. Versioned little-endian byte strings; decoding is
//! total and reports corruption instead of panicking.

use mcbp::{Cas, Seqno, VbState, VbUuid, Vbid};

use crate::failover::{FailoverEntry, FailoverLog};
use crate::item::DeleteSource;
use crate::stored::RecordFields;
use crate::vbucket::{Stored, VbMeta};

const ITEM_RECORD_V1: u8 = 1;
const VB_RECORD_V1: u8 = 1;

const FLAG_DELETED: u8 = 0x01;
const FLAG_EXPIRED: u8 = 0x02;

/// Appends an item record to `out` (a flush builds a whole commit in one buffer).
pub(crate) fn encode_item(stored: &Stored, out: &mut Vec<u8>) {
    let (key, value) = (stored.key(), stored.value());
    out.reserve(48 + key.len() + value.len());
    let mut flags = 0;
    if stored.deleted() {
        flags |= FLAG_DELETED;
    }
    if stored.delete_source() == DeleteSource::Expired {
        flags |= FLAG_EXPIRED;
    }
    out.push(ITEM_RECORD_V1);
    out.push(flags);
    out.extend_from_slice(&stored.cas().0.to_le_bytes());
    out.extend_from_slice(&stored.rev_seqno().to_le_bytes());
    out.extend_from_slice(&stored.flags().to_le_bytes());
    out.extend_from_slice(&stored.expiry().to_le_bytes());
    out.extend_from_slice(&stored.delete_time().to_le_bytes());
    out.push(stored.datatype());
    out.extend_from_slice(&stored.origin().0.to_le_bytes());
    let key_len = u16::try_from(key.len()).expect("keys are at most MAX_KEY_LEN bytes");
    out.extend_from_slice(&key_len.to_le_bytes());
    // Key and value are one slice of the version.
    out.extend_from_slice(stored.key_value());
}

/// Decodes an item record; `None` if the bytes are not a valid record.
pub(crate) fn decode_item(seqno: u64, bytes: &[u8]) -> Option<Stored> {
    let mut r = Reader(bytes);
    if r.u8()? != ITEM_RECORD_V1 {
        return None;
    }
    let flags = r.u8()?;
    let cas = r.u64()?;
    let rev_seqno = r.u64()?;
    let user_flags = r.u32()?;
    let expiry = r.u32()?;
    let delete_time = r.u32()?;
    let datatype = r.u8()?;
    let origin = r.u64()?;
    let key_len = usize::from(r.u16()?);
    let fields = RecordFields {
        cas: Cas(cas),
        rev_seqno,
        by_seqno: Seqno(seqno),
        origin: Seqno(origin),
        flags: user_flags,
        expiry,
        delete_time,
        datatype,
        deleted: flags & FLAG_DELETED != 0,
        delete_source: if flags & FLAG_EXPIRED != 0 {
            DeleteSource::Expired
        } else {
            DeleteSource::Explicit
        },
    };
    // The key, then the value: both are the rest of the record.
    Stored::from_record(fields, key_len, r.0)
}

/// Appends a vbucket record to `out`.
pub(crate) fn encode_vb(meta: &VbMeta, out: &mut Vec<u8>) {
    let entries = meta.failover.entries();
    out.reserve(38 + entries.len() * 16);
    out.push(VB_RECORD_V1);
    out.push(meta.state.to_u8());
    for s in [
        meta.high_seqno,
        meta.purge_seqno,
        meta.snap_start,
        meta.snap_end,
    ] {
        out.extend_from_slice(&s.0.to_le_bytes());
    }
    let n = u32::try_from(entries.len()).expect("failover logs are capped at 25 entries");
    out.extend_from_slice(&n.to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.vb_uuid.0.to_le_bytes());
        out.extend_from_slice(&e.seqno.0.to_le_bytes());
    }
}

/// Decodes a vbucket record; `None` if the bytes are not a valid record.
pub(crate) fn decode_vb(bytes: &[u8]) -> Option<VbMeta> {
    let mut r = Reader(bytes);
    if r.u8()? != VB_RECORD_V1 {
        return None;
    }
    let state = VbState::from_u8(r.u8()?)?;
    let high_seqno = Seqno(r.u64()?);
    let purge_seqno = Seqno(r.u64()?);
    let snap_start = Seqno(r.u64()?);
    let snap_end = Seqno(r.u64()?);
    let n = r.u32()?;
    let mut entries = Vec::new();
    for _ in 0..n {
        entries.push(FailoverEntry {
            vb_uuid: VbUuid(r.u64()?),
            seqno: Seqno(r.u64()?),
        });
    }
    if !r.0.is_empty() {
        return None;
    }
    Some(VbMeta {
        state,
        high_seqno,
        purge_seqno,
        snap_start,
        snap_end,
        failover: FailoverLog::from_entries(entries),
    })
}

/// The vbucket id a table key names, if it is within the bucket.
pub(crate) fn vbid_in_range(raw: u16, num_vbuckets: u16) -> Option<Vbid> {
    (raw < num_vbuckets).then_some(Vbid(raw))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::Item;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn sample() -> Stored {
        let item = Item {
            key: Bytes::from_static(b"key"),
            value: Bytes::from_static(b"{\"a\":1}"),
            cas: Cas(0x1234_5678_9abc),
            flags: 0x0200_0000,
            expiry: 1_800_000_000,
            datatype: 1,
            rev_seqno: 9,
            by_seqno: Seqno(42),
            deleted: true,
            delete_source: DeleteSource::Expired,
            delete_time: 1_700_000_000,
        };
        Stored::new(&item, Seqno(3), &mut Vec::new())
    }

    fn encoded(s: &Stored) -> Vec<u8> {
        let mut out = Vec::new();
        encode_item(s, &mut out);
        out
    }

    #[test]
    fn item_records_round_trip() {
        let s = sample();
        assert_eq!(decode_item(42, &encoded(&s)), Some(s));
    }

    #[test]
    fn records_append_after_what_the_buffer_holds() {
        let s = sample();
        let mut buf = b"head".to_vec();
        encode_item(&s, &mut buf);
        assert_eq!(&buf[..4], b"head");
        assert_eq!(buf[4..], encoded(&s)[..]);
        assert_eq!(decode_item(42, &buf[4..]), Some(s));
    }

    #[test]
    fn vbucket_records_round_trip_and_reject_trailing_bytes() {
        let meta = VbMeta {
            state: VbState::Replica,
            high_seqno: Seqno(10),
            purge_seqno: Seqno(2),
            snap_start: Seqno(5),
            snap_end: Seqno(20),
            failover: FailoverLog::from_entries(vec![
                FailoverEntry {
                    vb_uuid: VbUuid(7),
                    seqno: Seqno(5),
                },
                FailoverEntry {
                    vb_uuid: VbUuid(6),
                    seqno: Seqno(0),
                },
            ]),
        };
        let mut bytes = Vec::new();
        encode_vb(&meta, &mut bytes);
        assert_eq!(decode_vb(&bytes), Some(meta));
        bytes.push(0);
        assert_eq!(decode_vb(&bytes), None);
    }

    proptest! {
        #[test]
        fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode_item(1, &bytes);
            let _ = decode_vb(&bytes);
        }

        #[test]
        fn truncated_item_records_are_rejected_not_misread(cut in 0usize..44) {
            let bytes = encoded(&sample());
            // 41 fixed bytes then the 3-byte key: cutting before the value must fail.
            prop_assert!(decode_item(42, &bytes[..cut]).is_none());
        }
    }
}
