//! The 24-byte header, magics, datatype bits, and [`Frame`]: a whole packet with
//! zero-copy views of its sections (`mcbp-dcp.md` §1).

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::ids::{Cas, Opaque, Vbid};
use crate::opcode::{Opcode, ServerOpcode};
use crate::status::Status;

/// Length of every MCBP header.
pub const HEADER_LEN: usize = 24;

/// The first byte of a packet (`mcbp-dcp.md` §1.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Magic {
    /// 0x80: client request (on DCP also producer -> consumer data).
    ClientRequest,
    /// 0x81: response to a 0x80 request.
    ClientResponse,
    /// 0x08: client request with framing extras.
    AltClientRequest,
    /// 0x18: response with framing extras.
    AltClientResponse,
    /// 0x82: server-initiated request (needs HELLO Duplex).
    ServerRequest,
    /// 0x83: client response to a 0x82 request.
    ServerResponse,
    /// Any other byte. The frame is still delimited by bytes 8–11 so a proxy can
    /// forward it untouched, but none of its sections are interpreted.
    Unknown(u8),
}

impl Magic {
    /// The wire byte.
    #[must_use]
    pub const fn to_u8(self) -> u8 {
        match self {
            Magic::ClientRequest => 0x80,
            Magic::ClientResponse => 0x81,
            Magic::AltClientRequest => 0x08,
            Magic::AltClientResponse => 0x18,
            Magic::ServerRequest => 0x82,
            Magic::ServerResponse => 0x83,
            Magic::Unknown(b) => b,
        }
    }

    /// Maps the wire byte.
    #[must_use]
    pub const fn from_u8(b: u8) -> Magic {
        match b {
            0x80 => Magic::ClientRequest,
            0x81 => Magic::ClientResponse,
            0x08 => Magic::AltClientRequest,
            0x18 => Magic::AltClientResponse,
            0x82 => Magic::ServerRequest,
            0x83 => Magic::ServerResponse,
            other => Magic::Unknown(other),
        }
    }

    /// Requests carry a vbucket in bytes 6–7.
    #[must_use]
    pub const fn is_request(self) -> bool {
        matches!(
            self,
            Magic::ClientRequest | Magic::AltClientRequest | Magic::ServerRequest
        )
    }

    /// Responses carry a status in bytes 6–7.
    #[must_use]
    pub const fn is_response(self) -> bool {
        matches!(
            self,
            Magic::ClientResponse | Magic::AltClientResponse | Magic::ServerResponse
        )
    }

    /// 0x08/0x18: byte 2 is the framing-extras length and byte 3 the key length.
    #[must_use]
    pub const fn is_alt(self) -> bool {
        matches!(self, Magic::AltClientRequest | Magic::AltClientResponse)
    }

    /// 0x82/0x83: the opcode is a [`ServerOpcode`].
    #[must_use]
    pub const fn is_server_initiated(self) -> bool {
        matches!(self, Magic::ServerRequest | Magic::ServerResponse)
    }
}

impl fmt::Display for Magic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#04x}", self.to_u8())
    }
}

/// The datatype bit set of byte 5 (`mcbp-dcp.md` §1.6).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Datatype(pub u8);

impl Datatype {
    /// Raw bytes.
    pub const RAW: Datatype = Datatype(0);
    /// The value is JSON.
    pub const JSON: Datatype = Datatype(0x01);
    /// The value is Snappy-compressed.
    pub const SNAPPY: Datatype = Datatype(0x02);
    /// The value starts with an xattr section.
    pub const XATTR: Datatype = Datatype(0x04);

    /// Whether every bit of `other` is set here.
    #[must_use]
    pub const fn contains(self, other: Datatype) -> bool {
        self.0 & other.0 == other.0
    }

    /// Values above 0x07 are invalid (EINVAL).
    #[must_use]
    pub const fn is_valid(self) -> bool {
        self.0 <= 0x07
    }

    /// This datatype with `other`'s bits cleared.
    #[must_use]
    pub const fn without(self, other: Datatype) -> Datatype {
        Datatype(self.0 & !other.0)
    }

    /// The union of both bit sets.
    #[must_use]
    pub const fn with(self, other: Datatype) -> Datatype {
        Datatype(self.0 | other.0)
    }
}

impl fmt::Debug for Datatype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("RAW");
        }
        let mut first = true;
        for (bit, name) in [(0x01, "JSON"), (0x02, "SNAPPY"), (0x04, "XATTR")] {
            if self.0 & bit != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if self.0 & !0x07 != 0 {
            write!(f, "{}{:#04x}", if first { "" } else { "|" }, self.0 & !0x07)?;
        }
        Ok(())
    }
}

/// A decoded 24-byte header.
///
/// Length fields are already split by magic: for 0x08/0x18 `framing_extras_len`
/// comes from byte 2 and the key length from byte 3; otherwise framing extras are 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Byte 0.
    pub magic: Magic,
    /// Byte 1, raw; see [`Header::opcode`].
    pub opcode: u8,
    /// Byte 2 of alt-magic frames, else 0.
    pub framing_extras_len: u8,
    /// Bytes 2–3 (or byte 3 for alt magic).
    pub key_len: u16,
    /// Byte 4.
    pub extras_len: u8,
    /// Byte 5.
    pub datatype: Datatype,
    /// Bytes 6–7: vbucket in requests, status in responses.
    pub vbucket_or_status: u16,
    /// Bytes 8–11: framing extras + extras + key + value.
    pub body_len: u32,
    /// Bytes 12–15.
    pub opaque: Opaque,
    /// Bytes 16–23.
    pub cas: Cas,
}

impl Header {
    /// Parses a header from its 24 bytes. Never fails: consistency of the lengths is
    /// checked by the decoder, which knows the body-length cap.
    #[must_use]
    pub fn parse(b: &[u8; HEADER_LEN]) -> Header {
        let magic = Magic::from_u8(b[0]);
        let (framing_extras_len, key_len) = if magic.is_alt() {
            (b[2], u16::from(b[3]))
        } else {
            (0, u16::from_be_bytes([b[2], b[3]]))
        };
        Header {
            magic,
            opcode: b[1],
            framing_extras_len,
            key_len,
            extras_len: b[4],
            datatype: Datatype(b[5]),
            vbucket_or_status: u16::from_be_bytes([b[6], b[7]]),
            body_len: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            opaque: Opaque(u32::from_be_bytes([b[12], b[13], b[14], b[15]])),
            cas: Cas(u64::from_be_bytes([
                b[16], b[17], b[18], b[19], b[20], b[21], b[22], b[23],
            ])),
        }
    }

    /// The opcode in the client namespace (meaningless for 0x82/0x83 frames; see
    /// [`Header::server_opcode`]).
    #[must_use]
    pub fn opcode(&self) -> Opcode {
        Opcode::from_raw(self.opcode)
    }

    /// The opcode in the server-initiated namespace.
    #[must_use]
    pub fn server_opcode(&self) -> ServerOpcode {
        ServerOpcode::from_raw(self.opcode)
    }

    /// Total packet length: 24 + body length.
    #[must_use]
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.body_len as usize
    }
}

/// A whole packet: the raw bytes as received plus its parsed header.
///
/// The proxy inspects a `Frame` and forwards [`Frame::bytes`], never a re-encoding.
/// Section accessors are zero-copy. A frame with an unknown magic exposes only its
/// header and raw bytes; its section accessors return empty slices.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    header: Header,
    bytes: Bytes,
}

impl Frame {
    /// Wraps bytes whose header and lengths the decoder already validated.
    pub(crate) fn from_validated(header: Header, bytes: Bytes) -> Frame {
        debug_assert_eq!(bytes.len(), header.frame_len());
        Frame { header, bytes }
    }

    /// The parsed header.
    #[must_use]
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The raw packet, header included.
    #[must_use]
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Consumes the frame, returning its raw packet.
    #[must_use]
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The packet length on the wire (24 + body).
    #[must_use]
    pub fn wire_len(&self) -> usize {
        self.bytes.len()
    }

    /// The magic.
    #[must_use]
    pub fn magic(&self) -> Magic {
        self.header.magic
    }

    /// The client-namespace opcode.
    #[must_use]
    pub fn opcode(&self) -> Opcode {
        self.header.opcode()
    }

    /// Whether this is a request of any kind.
    #[must_use]
    pub fn is_request(&self) -> bool {
        self.header.magic.is_request()
    }

    /// Whether this is a response of any kind.
    #[must_use]
    pub fn is_response(&self) -> bool {
        self.header.magic.is_response()
    }

    /// A client request (0x80/0x08) with this opcode.
    #[must_use]
    pub fn is_client_request(&self, op: Opcode) -> bool {
        matches!(
            self.header.magic,
            Magic::ClientRequest | Magic::AltClientRequest
        ) && self.opcode() == op
    }

    /// A response to a client request (0x81/0x18) with this opcode.
    #[must_use]
    pub fn is_client_response(&self, op: Opcode) -> bool {
        matches!(
            self.header.magic,
            Magic::ClientResponse | Magic::AltClientResponse
        ) && self.opcode() == op
    }

    /// Bytes 6–7 read as a vbucket (meaningful on requests).
    #[must_use]
    pub fn vbucket(&self) -> Vbid {
        Vbid(self.header.vbucket_or_status)
    }

    /// Bytes 6–7 read as a status (meaningful on responses).
    #[must_use]
    pub fn status(&self) -> Status {
        Status::from_raw(self.header.vbucket_or_status)
    }

    /// The opaque.
    #[must_use]
    pub fn opaque(&self) -> Opaque {
        self.header.opaque
    }

    /// The CAS.
    #[must_use]
    pub fn cas(&self) -> Cas {
        self.header.cas
    }

    /// The datatype bits.
    #[must_use]
    pub fn datatype(&self) -> Datatype {
        self.header.datatype
    }

    fn section(&self, start: usize, len: usize) -> &[u8] {
        if matches!(self.header.magic, Magic::Unknown(_)) {
            return &[];
        }
        &self.bytes[HEADER_LEN + start..HEADER_LEN + start + len]
    }

    fn offsets(&self) -> (usize, usize, usize) {
        let fe = usize::from(self.header.framing_extras_len);
        let ex = usize::from(self.header.extras_len);
        let key = usize::from(self.header.key_len);
        (fe, fe + ex, fe + ex + key)
    }

    /// The framing extras (alt magic only).
    #[must_use]
    pub fn framing_extras(&self) -> &[u8] {
        self.section(0, usize::from(self.header.framing_extras_len))
    }

    /// The extras.
    #[must_use]
    pub fn extras(&self) -> &[u8] {
        let (ex_start, _, _) = self.offsets();
        self.section(ex_start, usize::from(self.header.extras_len))
    }

    /// The key.
    #[must_use]
    pub fn key(&self) -> &[u8] {
        let (_, key_start, _) = self.offsets();
        self.section(key_start, usize::from(self.header.key_len))
    }

    /// The value.
    #[must_use]
    pub fn value(&self) -> &[u8] {
        let (_, _, value_start) = self.offsets();
        let body = self.header.body_len as usize;
        self.section(value_start, body.saturating_sub(value_start))
    }

    /// The value as a shared, zero-copy `Bytes`.
    #[must_use]
    pub fn value_bytes(&self) -> Bytes {
        if matches!(self.header.magic, Magic::Unknown(_)) {
            return Bytes::new();
        }
        let (_, _, value_start) = self.offsets();
        self.bytes.slice(HEADER_LEN + value_start..)
    }

    /// The key as a shared, zero-copy `Bytes`.
    #[must_use]
    pub fn key_bytes(&self) -> Bytes {
        if matches!(self.header.magic, Magic::Unknown(_)) {
            return Bytes::new();
        }
        let (_, key_start, value_start) = self.offsets();
        self.bytes
            .slice(HEADER_LEN + key_start..HEADER_LEN + value_start)
    }

    /// Iterates the framing-extras FrameInfo objects (§1.4).
    pub fn frame_infos(&self) -> FrameInfoIter<'_> {
        FrameInfoIter {
            rest: self.framing_extras(),
        }
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = &self.header;
        let mut d = f.debug_struct("Frame");
        d.field("magic", &h.magic);
        if h.magic.is_server_initiated() {
            d.field("opcode", &h.server_opcode());
        } else {
            d.field("opcode", &h.opcode());
        }
        if h.magic.is_response() {
            d.field("status", &self.status());
        } else {
            d.field("vbucket", &self.vbucket());
        }
        d.field("opaque", &h.opaque)
            .field("cas", &h.cas)
            .field("datatype", &h.datatype)
            .field("framing_extras_len", &h.framing_extras_len)
            .field("extras_len", &h.extras_len)
            .field("key_len", &h.key_len)
            .field("body_len", &h.body_len)
            .finish()
    }
}

/// One FrameInfo object from the framing extras (§1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo<'a> {
    /// Object id (escape already applied).
    pub id: u16,
    /// Object data.
    pub data: &'a [u8],
}

/// The framing extras end inside a FrameInfo object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("framing extras: FrameInfo object truncated at byte {offset}")]
pub struct FrameInfoError {
    /// Bytes already consumed when the truncation was found.
    pub offset: usize,
}

/// Iterator over FrameInfo objects; yields one error and stops on truncation.
#[derive(Debug, Clone)]
pub struct FrameInfoIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for FrameInfoIter<'a> {
    type Item = Result<FrameInfo<'a>, FrameInfoError>;

    fn next(&mut self) -> Option<Self::Item> {
        let all = self.rest;
        let (&first, mut tail) = all.split_first()?;
        let truncated = || FrameInfoError { offset: 0 };
        let mut id = u16::from(first >> 4);
        let mut len = usize::from(first & 0x0f);
        if id == 15 {
            let Some((&b, t)) = tail.split_first() else {
                self.rest = &[];
                return Some(Err(truncated()));
            };
            id = 15 + u16::from(b);
            tail = t;
        }
        if len == 15 {
            let Some((&b, t)) = tail.split_first() else {
                self.rest = &[];
                return Some(Err(truncated()));
            };
            len = 15 + usize::from(b);
            tail = t;
        }
        if tail.len() < len {
            self.rest = &[];
            return Some(Err(truncated()));
        }
        let (data, rest) = tail.split_at(len);
        self.rest = rest;
        Some(Ok(FrameInfo { id, data }))
    }
}

/// Appends one FrameInfo object to `buf` using escapes where needed.
///
/// # Panics
/// If `id > 270` or `data.len() > 270` (not expressible on the wire).
pub fn put_frame_info(buf: &mut Vec<u8>, id: u16, data: &[u8]) {
    assert!(
        id <= 270 && data.len() <= 270,
        "FrameInfo id/length out of range"
    );
    let id_nib = id.min(15) as u8;
    let len_nib = data.len().min(15) as u8;
    buf.push(id_nib << 4 | len_nib);
    if id >= 15 {
        buf.push((id - 15) as u8);
    }
    if data.len() >= 15 {
        buf.push((data.len() - 15) as u8);
    }
    buf.extend_from_slice(data);
}

/// Everything needed to write one packet. Sections are borrowed; encoding copies them
/// once into the output buffer.
///
/// ```
/// use mcbp::{FrameSpec, Opcode, Opaque, Vbid};
/// let mut buf = bytes::BytesMut::new();
/// FrameSpec::request(Opcode::Get).vbucket(Vbid(3)).opaque(Opaque(7)).key(b"k").encode(&mut buf);
/// assert_eq!(buf.len(), 25);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct FrameSpec<'a> {
    /// The magic.
    pub magic: Magic,
    /// The raw opcode.
    pub opcode: u8,
    /// The datatype.
    pub datatype: Datatype,
    /// Vbucket (requests) or status (responses).
    pub vbucket_or_status: u16,
    /// The opaque.
    pub opaque: Opaque,
    /// The CAS.
    pub cas: Cas,
    /// Framing extras (alt magic only).
    pub framing_extras: &'a [u8],
    /// Extras.
    pub extras: &'a [u8],
    /// Key.
    pub key: &'a [u8],
    /// Value.
    pub value: &'a [u8],
}

impl<'a> FrameSpec<'a> {
    /// A 0x80 request.
    #[must_use]
    pub fn request(op: Opcode) -> Self {
        FrameSpec {
            magic: Magic::ClientRequest,
            opcode: op.to_raw(),
            datatype: Datatype::RAW,
            vbucket_or_status: 0,
            opaque: Opaque(0),
            cas: Cas(0),
            framing_extras: &[],
            extras: &[],
            key: &[],
            value: &[],
        }
    }

    /// A 0x81 response.
    #[must_use]
    pub fn response(op: Opcode, status: Status) -> Self {
        FrameSpec {
            magic: Magic::ClientResponse,
            vbucket_or_status: status.to_raw(),
            ..FrameSpec::request(op)
        }
    }

    /// A response to `req`: same opcode and opaque.
    #[must_use]
    pub fn response_to(req: &Frame, status: Status) -> Self {
        let magic = if req.magic().is_server_initiated() {
            Magic::ServerResponse
        } else {
            Magic::ClientResponse
        };
        FrameSpec {
            magic,
            opcode: req.header().opcode,
            ..FrameSpec::response(Opcode::Noop, status)
        }
        .opaque(req.opaque())
    }

    /// Sets the magic.
    #[must_use]
    pub fn magic(mut self, magic: Magic) -> Self {
        self.magic = magic;
        self
    }

    /// Sets the vbucket (requests).
    #[must_use]
    pub fn vbucket(mut self, vb: Vbid) -> Self {
        self.vbucket_or_status = vb.0;
        self
    }

    /// Sets the status (responses).
    #[must_use]
    pub fn status(mut self, status: Status) -> Self {
        self.vbucket_or_status = status.to_raw();
        self
    }

    /// Sets the opaque.
    #[must_use]
    pub fn opaque(mut self, opaque: Opaque) -> Self {
        self.opaque = opaque;
        self
    }

    /// Sets the CAS.
    #[must_use]
    pub fn cas(mut self, cas: Cas) -> Self {
        self.cas = cas;
        self
    }

    /// Sets the datatype.
    #[must_use]
    pub fn datatype(mut self, datatype: Datatype) -> Self {
        self.datatype = datatype;
        self
    }

    /// Sets the framing extras (switch to an alt magic with [`FrameSpec::magic`]).
    #[must_use]
    pub fn framing_extras(mut self, framing_extras: &'a [u8]) -> Self {
        self.framing_extras = framing_extras;
        self
    }

    /// Sets the extras.
    #[must_use]
    pub fn extras(mut self, extras: &'a [u8]) -> Self {
        self.extras = extras;
        self
    }

    /// Sets the key.
    #[must_use]
    pub fn key(mut self, key: &'a [u8]) -> Self {
        self.key = key;
        self
    }

    /// Sets the value.
    #[must_use]
    pub fn value(mut self, value: &'a [u8]) -> Self {
        self.value = value;
        self
    }

    /// The body length this frame will have.
    #[must_use]
    pub fn body_len(&self) -> usize {
        self.framing_extras.len() + self.extras.len() + self.key.len() + self.value.len()
    }

    /// Appends the packet to `buf`.
    ///
    /// # Panics
    /// If a section is longer than its length field can say (key > 65535, or > 255
    /// with alt magic; extras or framing extras > 255; body > 4 GiB), or framing
    /// extras are given without an alt magic. Callers validate lengths that come from
    /// a peer before building a frame from them.
    pub fn encode(&self, buf: &mut BytesMut) {
        let extras_len = u8::try_from(self.extras.len()).expect("extras longer than 255 bytes");
        let body_len = u32::try_from(self.body_len()).expect("body longer than u32::MAX");
        buf.reserve(HEADER_LEN + body_len as usize);
        buf.put_u8(self.magic.to_u8());
        buf.put_u8(self.opcode);
        if self.magic.is_alt() {
            buf.put_u8(u8::try_from(self.framing_extras.len()).expect("framing extras > 255"));
            buf.put_u8(u8::try_from(self.key.len()).expect("alt-magic key longer than 255"));
        } else {
            assert!(
                self.framing_extras.is_empty(),
                "framing extras need magic 0x08/0x18"
            );
            buf.put_u16(u16::try_from(self.key.len()).expect("key longer than 65535"));
        }
        buf.put_u8(extras_len);
        buf.put_u8(self.datatype.0);
        buf.put_u16(self.vbucket_or_status);
        buf.put_u32(body_len);
        buf.put_u32(self.opaque.0);
        buf.put_u64(self.cas.0);
        buf.put_slice(self.framing_extras);
        buf.put_slice(self.extras);
        buf.put_slice(self.key);
        buf.put_slice(self.value);
    }

    /// Encodes into a standalone [`Frame`].
    #[must_use]
    pub fn to_frame(&self) -> Frame {
        let mut buf = BytesMut::with_capacity(HEADER_LEN + self.body_len());
        self.encode(&mut buf);
        let bytes = buf.freeze();
        let mut hdr = [0u8; HEADER_LEN];
        hdr.copy_from_slice(&bytes[..HEADER_LEN]);
        Frame::from_validated(Header::parse(&hdr), bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alt_magic_splits_key_length_byte() {
        let mut fe = Vec::new();
        put_frame_info(&mut fe, 0, &[]);
        put_frame_info(&mut fe, 1, &[1, 0, 100]);
        let f = FrameSpec::request(Opcode::Set)
            .magic(Magic::AltClientRequest)
            .framing_extras(&fe)
            .extras(&[0; 8])
            .key(b"abc")
            .value(b"v")
            .to_frame();
        assert_eq!(f.header().framing_extras_len, 5);
        assert_eq!(f.header().key_len, 3);
        assert_eq!(f.key(), b"abc");
        assert_eq!(f.value(), b"v");
        let infos: Vec<_> = f
            .frame_infos()
            .collect::<Result<_, _>>()
            .expect("well formed");
        assert_eq!(infos.len(), 2);
        assert_eq!(
            infos[1],
            FrameInfo {
                id: 1,
                data: &[1, 0, 100]
            }
        );
    }

    #[test]
    fn frame_info_escapes_round_trip_and_truncation_is_an_error() {
        let mut fe = Vec::new();
        put_frame_info(&mut fe, 20, &[7u8; 20]);
        let it = FrameInfoIter { rest: &fe };
        let got: Vec<_> = it.collect();
        assert_eq!(
            got,
            vec![Ok(FrameInfo {
                id: 20,
                data: &[7u8; 20]
            })]
        );
        let cut = FrameInfoIter { rest: &fe[..5] };
        assert!(cut.last().expect("one item").is_err());
    }

    #[test]
    fn datatype_debug_names_bits() {
        assert_eq!(format!("{:?}", Datatype(0x05)), "JSON|XATTR");
        assert_eq!(format!("{:?}", Datatype(0)), "RAW");
        assert!(!Datatype(0x08).is_valid());
    }
}
