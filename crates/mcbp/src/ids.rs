//! Newtype ids. Never pass bare integers for these: a vbucket is not a seqno.

use std::fmt;

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty), $fmt:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, $fmt, self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, $fmt, self.0)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                Self(v)
            }
        }

        impl From<$name> for $inner {
            fn from(v: $name) -> Self {
                v.0
            }
        }
    };
}

id_newtype!(
    /// A vbucket id (header bytes 6–7 of a request). Displayed `vb:12`.
    Vbid(u16),
    "vb:{}"
);
id_newtype!(
    /// A per-vbucket sequence number.
    Seqno(u64),
    "seqno:{}"
);
id_newtype!(
    /// A vbucket UUID: the history branch in a failover log entry.
    VbUuid(u64),
    "uuid:{:#x}"
);
id_newtype!(
    /// A document version (CAS).
    Cas(u64),
    "cas:{:#x}"
);

/// The 4 opaque bytes of a header, read big-endian (as `mcbp-decode` prints `opaque`).
///
/// The responder echoes these bytes unchanged; treat them as an identifier, never as
/// arithmetic. See `mcbp-dcp.md` §1.7 for the ADD_STREAM response quirk.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Opaque(pub u32);

impl Opaque {
    /// The header bytes of this opaque in wire order.
    #[must_use]
    pub fn to_bytes(self) -> [u8; 4] {
        self.0.to_be_bytes()
    }

    /// The opaque whose header bytes are the reverse of ours.
    ///
    /// kv_engine writes the ADD_STREAM response extras as the byte-reverse of the
    /// STREAM_REQ header opaque (`mcbp-dcp.md` §1.7).
    #[must_use]
    pub fn byte_reversed(self) -> Opaque {
        Opaque(self.0.swap_bytes())
    }
}

impl fmt::Display for Opaque {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

impl fmt::Debug for Opaque {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "opaque:{:#010x}", self.0)
    }
}

impl From<u32> for Opaque {
    fn from(v: u32) -> Self {
        Self(v)
    }
}

/// The state of a vbucket (`mcbp-dcp.md` §10): 1 active, 2 replica, 3 pending, 4 dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VbState {
    /// Serves reads and writes; streams out.
    Active,
    /// Receives a stream; serves replica reads.
    Replica,
    /// Receiving a takeover; refuses front-end traffic.
    Pending,
    /// Serves nothing.
    Dead,
}

impl VbState {
    /// The wire value.
    #[must_use]
    pub fn to_u8(self) -> u8 {
        match self {
            VbState::Active => 1,
            VbState::Replica => 2,
            VbState::Pending => 3,
            VbState::Dead => 4,
        }
    }

    /// Parses a wire value; `None` for anything but 1..=4.
    #[must_use]
    pub fn from_u8(v: u8) -> Option<VbState> {
        match v {
            1 => Some(VbState::Active),
            2 => Some(VbState::Replica),
            3 => Some(VbState::Pending),
            4 => Some(VbState::Dead),
            _ => None,
        }
    }

    /// The lowercase name used in stats and the admin API.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            VbState::Active => "active",
            VbState::Replica => "replica",
            VbState::Pending => "pending",
            VbState::Dead => "dead",
        }
    }

    /// Parses the lowercase name.
    #[must_use]
    pub fn parse(s: &str) -> Option<VbState> {
        match s {
            "active" => Some(VbState::Active),
            "replica" => Some(VbState::Replica),
            "pending" => Some(VbState::Pending),
            "dead" => Some(VbState::Dead),
            _ => None,
        }
    }
}

impl fmt::Display for VbState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_display_in_spec_words() {
        assert_eq!(Vbid(12).to_string(), "vb:12");
        assert_eq!(Opaque(0xdeadbeef).to_string(), "0xdeadbeef");
        assert_eq!(Opaque(0x01020304).byte_reversed(), Opaque(0x04030201));
    }

    #[test]
    fn vb_state_round_trips_and_rejects_others() {
        for v in 1..=4u8 {
            let s = VbState::from_u8(v).expect("1..=4 are states");
            assert_eq!(s.to_u8(), v);
            assert_eq!(VbState::parse(s.as_str()), Some(s));
        }
        assert_eq!(VbState::from_u8(0), None);
        assert_eq!(VbState::from_u8(5), None);
    }
}
