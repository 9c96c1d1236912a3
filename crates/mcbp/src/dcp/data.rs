//! Stream data: snapshot markers, mutations, deletions, expirations, seqno advanced,
//! system events (§6.8–6.11, §6.17, §6.19).

use bytes::{BufMut, Bytes, BytesMut};

use super::MarkerFlags;
use crate::frame::{Datatype, Frame, FrameSpec};
use crate::ids::{Cas, Opaque, Seqno, Vbid};
use crate::message::{
    be_u16, be_u32, be_u64, impl_try_from_frame, BodyField, Check, Direction, Message,
};
use crate::opcode::Opcode;
use crate::BodyError;

/// Which snapshot-marker encoding, with the fields only the V2 forms carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkerVersion {
    /// 20-byte extras, no value.
    V1,
    /// 1-byte extras (0x00), 36-byte value.
    V2_0 {
        /// Max visible seqno.
        max_visible_seqno: Seqno,
        /// High completed seqno (valid only with DISK).
        high_completed_seqno: Seqno,
    },
    /// 1-byte extras (0x02), 52-byte value.
    V2_2 {
        /// Max visible seqno.
        max_visible_seqno: Seqno,
        /// High completed seqno (valid only with DISK).
        high_completed_seqno: Seqno,
        /// Purge seqno.
        purge_seqno: Seqno,
        /// High prepared seqno (valid only with DISK).
        high_prepared_seqno: Seqno,
    },
}

/// DCP_SNAPSHOT_MARKER (§6.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotMarker {
    /// The vbucket.
    pub vbucket: Vbid,
    /// The stream opaque.
    pub opaque: Opaque,
    /// Snapshot start seqno.
    pub start: Seqno,
    /// Snapshot end seqno.
    pub end: Seqno,
    /// Flags (MEMORY, DISK, CHECKPOINT, ACK, …).
    pub flags: MarkerFlags,
    /// Encoding and V2 fields.
    pub version: MarkerVersion,
}

impl Message for SnapshotMarker {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::DcpSnapshotMarker
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let e = c.extras(&[20, 1])?;
        c.no_key()?;
        let base = |b: &[u8], version| SnapshotMarker {
            vbucket: frame.vbucket(),
            opaque: frame.opaque(),
            start: Seqno(be_u64(b, 0)),
            end: Seqno(be_u64(b, 8)),
            flags: MarkerFlags(be_u32(b, 16)),
            version,
        };
        if e.len() == 20 {
            c.no_value()?;
            return Ok(base(e, MarkerVersion::V1));
        }
        let v = frame.value();
        let need = match e[0] {
            0x00 => 36,
            0x02 => 52,
            other => {
                return Err(c.err(
                    BodyField::Extras,
                    format!("marker version {other:#04x} (expected 0x00 or 0x02)"),
                ))
            }
        };
        if v.len() != need {
            return Err(c.err(
                BodyField::Value,
                format!(
                    "length {} (marker V2 version {:#04x} needs {need})",
                    v.len(),
                    e[0]
                ),
            ));
        }
        let mvs = Seqno(be_u64(v, 20));
        let hcs = Seqno(be_u64(v, 28));
        let version = if e[0] == 0 {
            MarkerVersion::V2_0 {
                max_visible_seqno: mvs,
                high_completed_seqno: hcs,
            }
        } else {
            MarkerVersion::V2_2 {
                max_visible_seqno: mvs,
                high_completed_seqno: hcs,
                purge_seqno: Seqno(be_u64(v, 36)),
                high_prepared_seqno: Seqno(be_u64(v, 44)),
            }
        };
        Ok(base(v, version))
    }

    fn encode(&self, buf: &mut BytesMut) {
        let mut body = Vec::with_capacity(52);
        body.put_u64(self.start.0);
        body.put_u64(self.end.0);
        body.put_u32(self.flags.0);
        let spec = FrameSpec::request(Opcode::DcpSnapshotMarker)
            .vbucket(self.vbucket)
            .opaque(self.opaque);
        match self.version {
            MarkerVersion::V1 => spec.extras(&body).encode(buf),
            MarkerVersion::V2_0 {
                max_visible_seqno,
                high_completed_seqno,
            } => {
                body.put_u64(max_visible_seqno.0);
                body.put_u64(high_completed_seqno.0);
                spec.extras(&[0x00]).value(&body).encode(buf);
            }
            MarkerVersion::V2_2 {
                max_visible_seqno,
                high_completed_seqno,
                purge_seqno,
                high_prepared_seqno,
            } => {
                body.put_u64(max_visible_seqno.0);
                body.put_u64(high_completed_seqno.0);
                body.put_u64(purge_seqno.0);
                body.put_u64(high_prepared_seqno.0);
                spec.extras(&[0x02]).value(&body).encode(buf);
            }
        }
    }
}

/// DCP_MUTATION (§6.9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mutation {
    /// The vbucket.
    pub vbucket: Vbid,
    /// The stream opaque.
    pub opaque: Opaque,
    /// Document CAS.
    pub cas: Cas,
    /// Datatype of the value as sent.
    pub datatype: Datatype,
    /// Seqno of this mutation.
    pub by_seqno: Seqno,
    /// Revision seqno.
    pub rev_seqno: u64,
    /// User flags, copied as-is.
    pub flags: u32,
    /// Absolute expiry in seconds (0 = none).
    pub expiration: u32,
    /// Lock time.
    pub lock_time: u32,
    /// NRU / eviction hint.
    pub nru: u8,
    /// Document key.
    pub key: Bytes,
    /// Document value.
    pub value: Bytes,
}

impl Message for Mutation {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::DcpMutation
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let e = c.extras(&[31])?;
        c.key()?;
        if be_u16(e, 28) != 0 {
            return Err(c.err(BodyField::Extras, "nmeta must be 0"));
        }
        Ok(Mutation {
            vbucket: frame.vbucket(),
            opaque: frame.opaque(),
            cas: frame.cas(),
            datatype: frame.datatype(),
            by_seqno: Seqno(be_u64(e, 0)),
            rev_seqno: be_u64(e, 8),
            flags: be_u32(e, 16),
            expiration: be_u32(e, 20),
            lock_time: be_u32(e, 24),
            nru: e[30],
            key: frame.key_bytes(),
            value: frame.value_bytes(),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        let mut e = [0u8; 31];
        e[0..8].copy_from_slice(&self.by_seqno.0.to_be_bytes());
        e[8..16].copy_from_slice(&self.rev_seqno.to_be_bytes());
        e[16..20].copy_from_slice(&self.flags.to_be_bytes());
        e[20..24].copy_from_slice(&self.expiration.to_be_bytes());
        e[24..28].copy_from_slice(&self.lock_time.to_be_bytes());
        e[30] = self.nru;
        FrameSpec::request(Opcode::DcpMutation)
            .vbucket(self.vbucket)
            .opaque(self.opaque)
            .cas(self.cas)
            .datatype(self.datatype)
            .extras(&e)
            .key(&self.key)
            .value(&self.value)
            .encode(buf);
    }
}

/// DCP_DELETION (§6.10): V1 (18-byte extras) or V2 (21-byte extras with delete time).
///
/// Which one a receiver accepts depends on its connection's INCLUDE_DELETE_TIMES flag;
/// this type parses both and says which it saw through `delete_time`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deletion {
    /// The vbucket.
    pub vbucket: Vbid,
    /// The stream opaque.
    pub opaque: Opaque,
    /// Tombstone CAS.
    pub cas: Cas,
    /// Datatype of the value (usually RAW; xattrs possible).
    pub datatype: Datatype,
    /// Seqno of the deletion.
    pub by_seqno: Seqno,
    /// Revision seqno.
    pub rev_seqno: u64,
    /// `Some` for V2 (delete time), `None` for V1.
    pub delete_time: Option<u32>,
    /// Document key.
    pub key: Bytes,
    /// Value (xattrs only, usually empty).
    pub value: Bytes,
}

impl Message for Deletion {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::DcpDeletion
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let e = c.extras(&[18, 21])?;
        c.key()?;
        let delete_time = if e.len() == 21 {
            Some(be_u32(e, 16))
        } else {
            if be_u16(e, 16) != 0 {
                return Err(c.err(BodyField::Extras, "nmeta must be 0"));
            }
            None
        };
        Ok(Deletion {
            vbucket: frame.vbucket(),
            opaque: frame.opaque(),
            cas: frame.cas(),
            datatype: frame.datatype(),
            by_seqno: Seqno(be_u64(e, 0)),
            rev_seqno: be_u64(e, 8),
            delete_time,
            key: frame.key_bytes(),
            value: frame.value_bytes(),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        let mut e = Vec::with_capacity(21);
        e.put_u64(self.by_seqno.0);
        e.put_u64(self.rev_seqno);
        match self.delete_time {
            Some(t) => {
                e.put_u32(t);
                e.put_u8(0);
            }
            None => e.put_u16(0),
        }
        FrameSpec::request(Opcode::DcpDeletion)
            .vbucket(self.vbucket)
            .opaque(self.opaque)
            .cas(self.cas)
            .datatype(self.datatype)
            .extras(&e)
            .key(&self.key)
            .value(&self.value)
            .encode(buf);
    }
}

/// DCP_EXPIRATION (§6.11): 20-byte extras.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expiration {
    /// The vbucket.
    pub vbucket: Vbid,
    /// The stream opaque.
    pub opaque: Opaque,
    /// Tombstone CAS.
    pub cas: Cas,
    /// Datatype of the value.
    pub datatype: Datatype,
    /// Seqno of the expiration.
    pub by_seqno: Seqno,
    /// Revision seqno.
    pub rev_seqno: u64,
    /// Delete time.
    pub delete_time: u32,
    /// Document key.
    pub key: Bytes,
    /// Value (usually empty).
    pub value: Bytes,
}

impl Message for Expiration {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::DcpExpiration
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let e = c.extras(&[20])?;
        c.key()?;
        Ok(Expiration {
            vbucket: frame.vbucket(),
            opaque: frame.opaque(),
            cas: frame.cas(),
            datatype: frame.datatype(),
            by_seqno: Seqno(be_u64(e, 0)),
            rev_seqno: be_u64(e, 8),
            delete_time: be_u32(e, 16),
            key: frame.key_bytes(),
            value: frame.value_bytes(),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        let mut e = Vec::with_capacity(20);
        e.put_u64(self.by_seqno.0);
        e.put_u64(self.rev_seqno);
        e.put_u32(self.delete_time);
        FrameSpec::request(Opcode::DcpExpiration)
            .vbucket(self.vbucket)
            .opaque(self.opaque)
            .cas(self.cas)
            .datatype(self.datatype)
            .extras(&e)
            .key(&self.key)
            .value(&self.value)
            .encode(buf);
    }
}

/// DCP_SEQNO_ADVANCED (§6.19).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqnoAdvanced {
    /// The vbucket.
    pub vbucket: Vbid,
    /// The stream opaque.
    pub opaque: Opaque,
    /// The seqno the stream moved to.
    pub seqno: Seqno,
}

impl Message for SeqnoAdvanced {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::DcpSeqnoAdvanced
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let e = c.extras(&[8])?;
        c.no_key()?;
        c.no_value()?;
        Ok(SeqnoAdvanced {
            vbucket: frame.vbucket(),
            opaque: frame.opaque(),
            seqno: Seqno(be_u64(e, 0)),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        FrameSpec::request(Opcode::DcpSeqnoAdvanced)
            .vbucket(self.vbucket)
            .opaque(self.opaque)
            .extras(&self.seqno.0.to_be_bytes())
            .encode(buf);
    }
}

/// DCP_SYSTEM_EVENT (§6.17).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemEvent {
    /// The vbucket.
    pub vbucket: Vbid,
    /// The stream opaque.
    pub opaque: Opaque,
    /// Seqno the event consumes.
    pub by_seqno: Seqno,
    /// Event id (0 begin collection, 1 end collection, 3 create scope, …).
    pub event: u32,
    /// Value version (0/1 fixed binary, 2 FlatBuffers).
    pub version: u8,
    /// Event key (e.g. collection name).
    pub key: Bytes,
    /// Event value.
    pub value: Bytes,
}

impl Message for SystemEvent {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::DcpSystemEvent
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        let e = c.extras(&[13])?;
        Ok(SystemEvent {
            vbucket: frame.vbucket(),
            opaque: frame.opaque(),
            by_seqno: Seqno(be_u64(e, 0)),
            event: be_u32(e, 8),
            version: e[12],
            key: frame.key_bytes(),
            value: frame.value_bytes(),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        let mut e = Vec::with_capacity(13);
        e.put_u64(self.by_seqno.0);
        e.put_u32(self.event);
        e.put_u8(self.version);
        FrameSpec::request(Opcode::DcpSystemEvent)
            .vbucket(self.vbucket)
            .opaque(self.opaque)
            .extras(&e)
            .key(&self.key)
            .value(&self.value)
            .encode(buf);
    }
}

impl_try_from_frame!(
    SnapshotMarker,
    Mutation,
    Deletion,
    Expiration,
    SeqnoAdvanced,
    SystemEvent
);

#[cfg(test)]
mod tests {
    use super::*;

    /// §9.2 worked example.
    #[test]
    fn mutation_matches_spec_example_9_2() {
        let m = Mutation {
            vbucket: Vbid(5),
            opaque: Opaque(0xdeadbeef),
            cas: Cas(0x17f0a1b2c3d40000),
            datatype: Datatype::RAW,
            by_seqno: Seqno(7),
            rev_seqno: 1,
            flags: 0,
            expiration: 0,
            lock_time: 0,
            nru: 0,
            key: Bytes::from_static(b"k1"),
            value: Bytes::from_static(b"v1"),
        };
        let mut buf = BytesMut::new();
        m.encode(&mut buf);
        assert_eq!(
            hex::encode(&buf),
            "805700021f00000500000023deadbeef17f0a1b2c3d40000000000000000000700000000000000010000000000000000000000000000006b317631"
        );
        assert_eq!(Mutation::parse(&m.to_frame()), Ok(m));
    }

    /// §9.3 V1 marker example.
    #[test]
    fn snapshot_marker_v1_matches_spec_example_9_3() {
        let m = SnapshotMarker {
            vbucket: Vbid(5),
            opaque: Opaque(0xdeadbeef),
            start: Seqno(1),
            end: Seqno(7),
            flags: MarkerFlags(MarkerFlags::MEMORY | MarkerFlags::CHECKPOINT),
            version: MarkerVersion::V1,
        };
        let mut buf = BytesMut::new();
        m.encode(&mut buf);
        assert_eq!(
            hex::encode(&buf),
            "8056000014000005 00000014deadbeef 0000000000000000 0000000000000001 0000000000000007 00000005".replace(' ', "")
        );
    }

    #[test]
    fn marker_v2_sizes_and_bad_versions() {
        let m = SnapshotMarker {
            vbucket: Vbid(1),
            opaque: Opaque(9),
            start: Seqno(1),
            end: Seqno(2),
            flags: MarkerFlags(MarkerFlags::DISK),
            version: MarkerVersion::V2_2 {
                max_visible_seqno: Seqno(2),
                high_completed_seqno: Seqno(1),
                purge_seqno: Seqno(0),
                high_prepared_seqno: Seqno(0),
            },
        };
        let f = m.to_frame();
        assert_eq!(f.wire_len(), 77, "flow-control size of a V2.2 marker");
        assert_eq!(SnapshotMarker::parse(&f), Ok(m));
        let bad = FrameSpec::request(Opcode::DcpSnapshotMarker)
            .extras(&[0x01])
            .value(&[0; 36])
            .to_frame();
        assert!(SnapshotMarker::parse(&bad).is_err(), "V2.1 is withdrawn");
    }

    #[test]
    fn deletion_v1_and_v2_have_their_flow_control_sizes() {
        let mut d = Deletion {
            vbucket: Vbid(1),
            opaque: Opaque(1),
            cas: Cas(1),
            datatype: Datatype::RAW,
            by_seqno: Seqno(3),
            rev_seqno: 2,
            delete_time: None,
            key: Bytes::from_static(b"k"),
            value: Bytes::new(),
        };
        assert_eq!(d.to_frame().wire_len(), 42 + 1);
        d.delete_time = Some(77);
        assert_eq!(d.to_frame().wire_len(), 45 + 1);
        assert_eq!(Deletion::parse(&d.to_frame()), Ok(d));
    }

    #[test]
    fn mutation_with_nmeta_is_refused() {
        let mut e = [0u8; 31];
        e[29] = 1;
        let f = FrameSpec::request(Opcode::DcpMutation)
            .extras(&e)
            .key(b"k")
            .to_frame();
        let err = Mutation::parse(&f).expect_err("nmeta");
        assert_eq!(err.field, BodyField::Extras);
    }
}
