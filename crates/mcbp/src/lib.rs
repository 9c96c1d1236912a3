//! The memcached binary protocol (MCBP) and DCP, as `shared/spec/mcbp-dcp.md` defines
//! them: headers for all six magics, opcodes, status codes, an incremental zero-copy
//! frame decoder, and typed build/parse for every DCP and KV message Conduit uses.
//!
//! This crate does no I/O, reads no clock and spawns nothing. A tokio-util
//! `Decoder`/`Encoder` adapter lives in [`codec`] behind the `codec` feature.
//!
//! Unknown magics, opcodes and statuses are kept as raw values: a proxy must forward
//! frames it does not understand byte for byte.

#![warn(missing_docs)]

mod codes;
mod decoder;
mod frame;
mod generic;
mod ids;
mod message;
mod opcode;
mod status;

#[cfg(feature = "codec")]
pub mod codec;
pub mod dcp;
pub mod kv;

pub use decoder::{DecodeError, FrameDecoder, LengthField, DEFAULT_MAX_BODY_LEN};
pub use frame::{
    put_frame_info, Datatype, Frame, FrameInfo, FrameInfoError, FrameInfoIter, FrameSpec, Header,
    Magic, HEADER_LEN,
};
pub use generic::{BareRequest, Response};
pub use ids::{Cas, Opaque, Seqno, VbState, VbUuid, Vbid};
pub use message::{BodyError, BodyField, Direction, Message};
pub use opcode::{Opcode, ServerOpcode};
pub use status::Status;
