//! Session setup: HELLO, SASL_LIST_MECHS, SASL_AUTH/STEP, SELECT_BUCKET (§4).
//!
//! SASL_LIST_MECHS requests use [`BareRequest`](crate::BareRequest); SASL_AUTH/STEP
//! and SELECT_BUCKET are answered with [`Response`](crate::Response) (status plus, for
//! SASL, the server's challenge or final data in the value).

use bytes::{BufMut, Bytes, BytesMut};

use crate::codes::code_table;
use crate::frame::{Frame, FrameSpec};
use crate::ids::Opaque;
use crate::message::{be_u16, impl_try_from_frame, BodyField, Check, Direction, Message};
use crate::opcode::Opcode;
use crate::status::Status;
use crate::BodyError;

code_table! {
    /// A HELLO feature code (§4.1). Codes the table does not name are kept as
    /// `Unknown` so a HELLO can be forwarded or answered without losing them.
    Feature(u16) {
        /// Retired; ignored by the server.
        RetiredDatatype = 0x01 => "DATATYPE",
        /// Never implemented.
        Tls = 0x02 => "TLS",
        /// Informational.
        TcpNodelay = 0x03 => "TCP_NODELAY",
        /// Mutation responses carry 16 B extras: vb uuid, seqno.
        MutationSeqno = 0x04 => "MUTATION_SEQNO",
        /// Unsupported.
        TcpDelay = 0x05 => "TCP_DELAY",
        /// Datatype XATTR allowed; DCP may carry xattrs.
        Xattr = 0x06 => "XATTR",
        /// The server may return any status instead of disconnecting.
        Xerror = 0x07 => "XERROR",
        /// Informational.
        SelectBucket = 0x08 => "SELECT_BUCKET",
        /// Retired.
        Retired09 = 0x09 => "RETIRED_0x09",
        /// Datatype SNAPPY allowed.
        Snappy = 0x0a => "SNAPPY",
        /// Datatype JSON allowed.
        Json = 0x0b => "JSON",
        /// The server may send 0x82 requests.
        Duplex = 0x0c => "DUPLEX",
        /// Cluster-map change notifications; needs DUPLEX.
        ClustermapChangeNotification = 0x0d => "CLUSTERMAP_CHANGE_NOTIFICATION",
        /// Not on DCP connections.
        UnorderedExecution = 0x0e => "UNORDERED_EXECUTION",
        /// Responses may carry a 0x18 duration frame.
        Tracing = 0x0f => "TRACING",
        /// Informational (0x08 requests accepted).
        AltRequestSupport = 0x10 => "ALT_REQUEST_SUPPORT",
        /// Informational.
        SyncReplication = 0x11 => "SYNC_REPLICATION",
        /// Keys carry a LEB128 collection id.
        Collections = 0x12 => "COLLECTIONS",
        /// Snappy everywhere.
        SnappyEverywhere = 0x13 => "SNAPPY_EVERYWHERE",
        /// Informational.
        PreserveTtl = 0x14 => "PRESERVE_TTL",
        /// Virtual xattrs; needs XATTR.
        Vattr = 0x15 => "VATTR",
        /// Retired point-in-time recovery.
        RetiredPitr = 0x16 => "PITR",
        /// Informational.
        SubdocCreateAsDeleted = 0x17 => "SUBDOC_CREATE_AS_DELETED",
        /// Informational.
        SubdocDocumentMacro = 0x18 => "SUBDOC_DOCUMENT_MACRO",
        /// Informational.
        SubdocReplaceBodyWithXattr = 0x19 => "SUBDOC_REPLACE_BODY_WITH_XATTR",
        /// Serverless only.
        ReportUnitUsage = 0x1a => "REPORT_UNIT_USAGE",
        /// Non-blocking throttling.
        NonBlockingThrottling = 0x1b => "NON_BLOCKING_THROTTLING",
        /// Subdoc reads from replicas.
        SubdocReplicaRead = 0x1c => "SUBDOC_REPLICA_READ",
        /// GET_CLUSTER_CONFIG with a known epoch and revision.
        GetClusterConfigWithKnownVersion = 0x1d => "GET_CLUSTER_CONFIG_WITH_KNOWN_VERSION",
        /// NOT_MY_VBUCKET omits a cluster map the client already has.
        DedupeNmvbClustermap = 0x1e => "DEDUPE_NMVB_CLUSTERMAP",
        /// Brief cluster-map notifications; needs DUPLEX.
        ClustermapChangeNotificationBrief = 0x1f => "CLUSTERMAP_CHANGE_NOTIFICATION_BRIEF",
        /// Informational.
        SubdocMultiXattrKeys = 0x20 => "SUBDOC_MULTI_XATTR_KEYS",
        /// Informational.
        SubdocBinaryXattr = 0x21 => "SUBDOC_BINARY_XATTR",
        /// Informational.
        RangeScanIncludeXattr = 0x22 => "RANGE_SCAN_INCLUDE_XATTR",
        /// Informational.
        SubdocReplicaReadDeleted = 0x23 => "SUBDOC_REPLICA_READ_DELETED",
        /// Informational.
        GetRandomKeyIncludeXattr = 0x24 => "GET_RANDOM_KEY_INCLUDE_XATTR",
        /// Informational.
        MutateWithMeta = 0x25 => "MUTATE_WITH_META",
        /// Informational.
        DcpSkipDeletesInInitialBackfill = 0x26 => "DCP_SKIP_DELETES_IN_INITIAL_BACKFILL",
    }
}

/// Reads a HELLO value: u16 BE feature codes.
fn parse_features(c: &Check<'_>, v: &[u8]) -> Result<Vec<Feature>, BodyError> {
    if !v.chunks_exact(2).remainder().is_empty() {
        return Err(c.err(
            BodyField::Value,
            format!(
                "{} bytes of u16 feature codes (need an even length)",
                v.len()
            ),
        ));
    }
    Ok(v.chunks_exact(2)
        .map(|f| Feature::from_raw(be_u16(f, 0)))
        .collect())
}

fn put_features(features: &[Feature]) -> Vec<u8> {
    let mut v = Vec::with_capacity(features.len() * 2);
    for f in features {
        v.put_u16(f.to_raw());
    }
    v
}

/// HELLO request (§4.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The opaque.
    pub opaque: Opaque,
    /// The agent name (key); may be empty. If it starts with `{` the server reads it
    /// as JSON with `"a"` agent and `"i"` connection id.
    pub agent: Bytes,
    /// Requested features, in request order.
    pub features: Vec<Feature>,
}

impl Message for Hello {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::Hello
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        c.extras(&[0])?;
        Ok(Hello {
            opaque: frame.opaque(),
            agent: frame.key_bytes(),
            features: parse_features(&c, frame.value())?,
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        let value = put_features(&self.features);
        FrameSpec::request(Opcode::Hello)
            .opaque(self.opaque)
            .key(&self.agent)
            .value(&value)
            .encode(buf);
    }
}

/// The answer to HELLO (§4.1): on SUCCESS, the features the server enabled, sorted by
/// code. On any other status `features` is empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloResponse {
    /// Echo of the request's opaque.
    pub opaque: Opaque,
    /// The status.
    pub status: Status,
    /// Enabled features.
    pub features: Vec<Feature>,
}

impl Message for HelloResponse {
    const DIRECTION: Direction = Direction::Response;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::Hello
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        c.extras(&[0])?;
        c.no_key()?;
        let status = frame.status();
        let features = if status.is_success() {
            parse_features(&c, frame.value())?
        } else {
            Vec::new()
        };
        Ok(HelloResponse {
            opaque: frame.opaque(),
            status,
            features,
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        let value = put_features(&self.features);
        FrameSpec::response(Opcode::Hello, self.status)
            .opaque(self.opaque)
            .value(&value)
            .encode(buf);
    }
}

/// The answer to SASL_LIST_MECHS (§4.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaslMechsResponse {
    /// Echo of the request's opaque.
    pub opaque: Opaque,
    /// The status.
    pub status: Status,
    /// The value: space-separated mechanism names on SUCCESS
    /// (`SCRAM-SHA512 SCRAM-SHA256 SCRAM-SHA1 PLAIN`), error context otherwise.
    pub mechs: Bytes,
}

impl SaslMechsResponse {
    /// The mechanism names, split on spaces.
    pub fn mechanisms(&self) -> impl Iterator<Item = &[u8]> {
        self.mechs.split(|&b| b == b' ').filter(|m| !m.is_empty())
    }
}

impl Message for SaslMechsResponse {
    const DIRECTION: Direction = Direction::Response;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::SaslListMechs
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        c.extras(&[0])?;
        c.no_key()?;
        Ok(SaslMechsResponse {
            opaque: frame.opaque(),
            status: frame.status(),
            mechs: frame.value_bytes(),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        FrameSpec::response(Opcode::SaslListMechs, self.status)
            .opaque(self.opaque)
            .value(&self.mechs)
            .encode(buf);
    }
}

/// SASL_AUTH (0x21) or SASL_STEP (0x22) request (§4.2): key = mechanism name, value =
/// client message. Answered with [`Response`](crate::Response): SUCCESS,
/// AUTH_CONTINUE (value = challenge) or AUTH_ERROR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaslAuth {
    /// [`Opcode::SaslAuth`] (first message) or [`Opcode::SaslStep`] (later ones).
    pub opcode: Opcode,
    /// The opaque.
    pub opaque: Opaque,
    /// Mechanism name, e.g. `PLAIN` or `SCRAM-SHA512` (non-empty).
    pub mechanism: Bytes,
    /// Client message; for PLAIN `authzid \0 user \0 password`.
    pub data: Bytes,
}

impl SaslAuth {
    /// A PLAIN authentication (empty authzid), as ns_server sends it.
    #[must_use]
    pub fn plain(opaque: Opaque, user: &[u8], password: &[u8]) -> SaslAuth {
        let mut data = Vec::with_capacity(2 + user.len() + password.len());
        data.push(0);
        data.extend_from_slice(user);
        data.push(0);
        data.extend_from_slice(password);
        SaslAuth {
            opcode: Opcode::SaslAuth,
            opaque,
            mechanism: Bytes::from_static(b"PLAIN"),
            data: data.into(),
        }
    }
}

impl Message for SaslAuth {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        matches!(op, Opcode::SaslAuth | Opcode::SaslStep)
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        c.extras(&[0])?;
        c.key()?;
        Ok(SaslAuth {
            opcode: frame.opcode(),
            opaque: frame.opaque(),
            mechanism: frame.key_bytes(),
            data: frame.value_bytes(),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        FrameSpec::request(self.opcode)
            .opaque(self.opaque)
            .key(&self.mechanism)
            .value(&self.data)
            .encode(buf);
    }
}

/// SELECT_BUCKET request (§4.3): key = bucket name (`@no bucket@` deselects).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectBucket {
    /// The opaque.
    pub opaque: Opaque,
    /// The bucket name (non-empty).
    pub bucket: Bytes,
}

impl Message for SelectBucket {
    const DIRECTION: Direction = Direction::Request;

    fn accepts(op: Opcode) -> bool {
        op == Opcode::SelectBucket
    }

    fn parse_body(frame: &Frame) -> Result<Self, BodyError> {
        let c = Check::new(frame, Self::DIRECTION);
        c.extras(&[0])?;
        c.key()?;
        c.no_value()?;
        Ok(SelectBucket {
            opaque: frame.opaque(),
            bucket: frame.key_bytes(),
        })
    }

    fn encode(&self, buf: &mut BytesMut) {
        FrameSpec::request(Opcode::SelectBucket)
            .opaque(self.opaque)
            .key(&self.bucket)
            .encode(buf);
    }
}

impl_try_from_frame!(
    Hello,
    HelloResponse,
    SaslMechsResponse,
    SaslAuth,
    SelectBucket
);

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_of(m: &impl Message) -> String {
        let mut buf = BytesMut::new();
        m.encode(&mut buf);
        hex::encode(&buf)
    }

    /// §4.1: key = agent, value = u16 BE codes, no extras.
    #[test]
    fn hello_matches_hand_computed_bytes() {
        let h = Hello {
            opaque: Opaque(1),
            agent: Bytes::from_static(b"cb"),
            features: vec![Feature::Xattr, Feature::Collections],
        };
        assert_eq!(
            hex_of(&h),
            "801f000200000000 0000000600000001 0000000000000000 6362 00060012".replace(' ', "")
        );
        assert_eq!(Hello::parse(&h.to_frame()), Ok(h));
    }

    #[test]
    fn hello_with_odd_value_is_a_value_error_and_unknown_codes_are_kept() {
        let f = FrameSpec::request(Opcode::Hello)
            .key(b"a")
            .value(&[0, 6, 0])
            .to_frame();
        assert_eq!(Hello::parse(&f).expect_err("odd").field, BodyField::Value);
        let f = FrameSpec::response(Opcode::Hello, Status::Success)
            .value(&[0x00, 0x06, 0x12, 0x34])
            .to_frame();
        let r = HelloResponse::parse(&f).expect("even");
        assert_eq!(r.features, vec![Feature::Xattr, Feature::Unknown(0x1234)]);
        let f = FrameSpec::request(Opcode::Hello).extras(&[0; 4]).to_frame();
        assert_eq!(
            Hello::parse(&f).expect_err("extras").field,
            BodyField::Extras
        );
    }

    #[test]
    fn feature_table_covers_0x01_to_0x26() {
        assert_eq!(Feature::ALL.len(), 0x26);
        for (i, f) in Feature::ALL.iter().enumerate() {
            assert_eq!(usize::from(f.to_raw()), i + 1);
        }
        assert_eq!(Feature::from_raw(0x27), Feature::Unknown(0x27));
    }

    /// §4.2: PLAIN is one SASL_AUTH with value `\0user\0pass`.
    #[test]
    fn sasl_plain_matches_hand_computed_bytes() {
        let a = SaslAuth::plain(Opaque(2), b"user", b"pass");
        assert_eq!(
            hex_of(&a),
            "8021000500000000 0000000f00000002 0000000000000000 504c41494e 00757365720070617373"
                .replace(' ', "")
        );
        assert_eq!(SaslAuth::parse(&a.to_frame()), Ok(a));
        let f = FrameSpec::request(Opcode::SaslStep)
            .value(b"c=biws")
            .to_frame();
        assert_eq!(
            SaslAuth::parse(&f).expect_err("no mechanism").field,
            BodyField::Key
        );
    }

    #[test]
    fn sasl_mechs_split_on_spaces() {
        let r = SaslMechsResponse {
            opaque: Opaque(1),
            status: Status::Success,
            mechs: Bytes::from_static(b"SCRAM-SHA512 PLAIN"),
        };
        let got: Vec<_> = r.mechanisms().collect();
        assert_eq!(got, vec![&b"SCRAM-SHA512"[..], &b"PLAIN"[..]]);
    }

    /// §4.3: key = bucket name, no extras or value.
    #[test]
    fn select_bucket_matches_hand_computed_bytes_and_refuses_bodies() {
        let s = SelectBucket {
            opaque: Opaque(3),
            bucket: Bytes::from_static(b"default"),
        };
        assert_eq!(
            hex_of(&s),
            "8089000700000000 0000000700000003 0000000000000000 64656661756c74".replace(' ', "")
        );
        let f = FrameSpec::request(Opcode::SelectBucket)
            .key(b"b")
            .extras(&[1])
            .to_frame();
        assert_eq!(
            SelectBucket::parse(&f).expect_err("extras").field,
            BodyField::Extras
        );
        let f = FrameSpec::request(Opcode::SelectBucket)
            .key(b"b")
            .value(b"x")
            .to_frame();
        assert_eq!(
            SelectBucket::parse(&f).expect_err("value").field,
            BodyField::Value
        );
    }
}
