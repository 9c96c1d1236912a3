//! The connection type.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mcbp::dcp::{FailoverEntry, FailoverLogResponse, Open, OpenFlags};
use mcbp::kv::{
    Feature, Get, GetResponse, Hello, HelloResponse, MutationResponse, SaslAuth, SaslMechsResponse,
    SelectBucket, SeqnoPersistence, SetVbucket, Stat, StatResponse, Store,
};
use mcbp::{
    BareRequest, Cas, Datatype, Frame, Message, Opaque, Opcode, Response, Seqno, Status, VbState,
    Vbid,
};
use mcbp_conn::{FrameReader, FrameWriter, ReadConfig, ReadError, WriteError};
use rand::distributions::Alphanumeric;
use rand::Rng;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::ClientError;
use sasl::{ScramClient, ScramMech};

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Bound on connect and on every wait for an answer.
    pub timeout: Duration,
    /// Largest frame body accepted.
    pub max_body_len: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_secs(30),
            max_body_len: mcbp::DEFAULT_MAX_BODY_LEN,
        }
    }
}

/// A user name and password.
#[derive(Clone)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// One MCBP connection.
#[derive(Debug)]
pub struct Client {
    reader: FrameReader<OwnedReadHalf>,
    writer: FrameWriter<OwnedWriteHalf>,
    peer: String,
    next_opaque: u32,
    config: ClientConfig,
}

impl Client {
    /// Connects (bounded by the configured timeout) and sets TCP_NODELAY.
    ///
    /// # Errors
    /// [`ClientError::Connect`] or [`ClientError::Timeout`].
    pub async fn connect(addr: &str, config: ClientConfig) -> Result<Client, ClientError> {
        let stream = match timeout(config.timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(ClientError::Timeout {
                    peer: addr.to_string(),
                    op: "connect",
                    after: config.timeout,
                })
            }
            Ok(Err(source)) => {
                return Err(ClientError::Connect {
                    peer: addr.to_string(),
                    source,
                })
            }
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let peer = stream
            .peer_addr()
            .map_or_else(|_| addr.to_string(), |a| a.to_string());
        let (rd, wr) = stream.into_split();
        let read = ReadConfig {
            max_body_len: config.max_body_len,
            ..ReadConfig::default()
        };
        Ok(Client {
            reader: FrameReader::new(rd, BytesMut::with_capacity(64 * 1024), read),
            // A client writes one request at a time; the call's own timeout bounds it.
            writer: FrameWriter::new(wr, usize::MAX, config.timeout),
            peer,
            next_opaque: 1,
            config,
        })
    }

    /// The peer's address, as used in errors.
    #[must_use]
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The peer's socket address.
    #[must_use]
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.reader.get_ref().peer_addr().ok()
    }

    /// The configured timeout.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    /// A fresh opaque for a request.
    pub fn next_opaque(&mut self) -> Opaque {
        let o = Opaque(self.next_opaque);
        self.next_opaque = self.next_opaque.wrapping_add(1).max(1);
        o
    }

    /// Takes the connection apart: the socket and any bytes already read past the
    /// last answer (they belong to the next reader).
    #[must_use]
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        let (rd, buf) = self.reader.into_parts();
        let stream = rd
            .reunite(self.writer.into_inner())
            .expect("both halves come from one stream");
        (stream, buf)
    }

    /// Writes bytes (bounded by the timeout).
    ///
    /// # Errors
    /// I/O failure or timeout.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.writer.staging().extend_from_slice(bytes);
        let after = self.config.timeout;
        match timeout(after, self.writer.flush()).await {
            Err(_) | Ok(Err(WriteError::Stalled(_))) => Err(ClientError::Timeout {
                peer: self.peer.clone(),
                op: "write",
                after,
            }),
            Ok(Err(WriteError::Io(source))) => Err(ClientError::Io {
                peer: self.peer.clone(),
                op: "write",
                source,
            }),
            Ok(Err(WriteError::Closed)) => Err(ClientError::Closed {
                peer: self.peer.clone(),
                op: "write",
            }),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Encodes and writes one message.
    ///
    /// # Errors
    /// I/O failure or timeout.
    pub async fn send<M: Message>(&mut self, m: &M) -> Result<(), ClientError> {
        let mut out = BytesMut::new();
        m.encode(&mut out);
        self.send_bytes(&out).await
    }

    /// Reads one whole frame (bounded by the timeout). Cancel-safe: partial bytes
    /// stay in the connection's buffer.
    ///
    /// # Errors
    /// I/O failure, timeout, closed connection or a corrupt stream.
    pub async fn read_frame(&mut self, op: &'static str) -> Result<Frame, ClientError> {
        let limit = self.config.timeout;
        match timeout(limit, self.read_frame_unbounded(op)).await {
            Err(_) => Err(ClientError::Timeout {
                peer: self.peer.clone(),
                op,
                after: limit,
            }),
            Ok(r) => r,
        }
    }

    async fn read_frame_unbounded(&mut self, op: &'static str) -> Result<Frame, ClientError> {
        self.reader.read_frame().await.map_err(|e| match e {
            ReadError::Closed => ClientError::Closed {
                peer: self.peer.clone(),
                op,
            },
            ReadError::Io(source) => ClientError::Io {
                peer: self.peer.clone(),
                op,
                source,
            },
            ReadError::Decode(source) => ClientError::Decode {
                peer: self.peer.clone(),
                source,
            },
        })
    }

    /// Sends a request and returns the answer with the same opcode and opaque.
    ///
    /// # Errors
    /// Transport errors, or [`ClientError::Unexpected`] for any other frame.
    pub async fn call<M: Message>(&mut self, req: &M) -> Result<Frame, ClientError> {
        let mut out = BytesMut::new();
        req.encode(&mut out);
        // The answer is matched on the request's own header (every encoding has one).
        let mut hdr = [0u8; mcbp::HEADER_LEN];
        hdr.copy_from_slice(&out[..mcbp::HEADER_LEN]);
        let hdr = mcbp::Header::parse(&hdr);
        let (opcode, opaque) = (hdr.opcode(), hdr.opaque);
        self.send_bytes(&out).await?;
        let answer = self.read_frame(opcode.name()).await?;
        if answer.is_client_response(opcode) && answer.opaque() == opaque {
            Ok(answer)
        } else {
            Err(ClientError::Unexpected {
                peer: self.peer.clone(),
                expected: opcode,
                opaque,
                got: answer.opcode(),
                got_magic: answer.magic(),
            })
        }
    }

    fn status_error(&self, f: &Frame) -> ClientError {
        ClientError::Status {
            peer: self.peer.clone(),
            opcode: f.opcode(),
            status: f.status(),
            context: String::from_utf8_lossy(f.value())
                .chars()
                .take(200)
                .collect(),
        }
    }

    /// Sends a request and requires SUCCESS.
    ///
    /// # Errors
    /// Transport errors or [`ClientError::Status`].
    pub async fn call_ok<M: Message>(&mut self, req: &M) -> Result<Frame, ClientError> {
        let f = self.call(req).await?;
        if f.status().is_success() {
            Ok(f)
        } else {
            Err(self.status_error(&f))
        }
    }

    fn parse<M: Message>(&self, f: &Frame) -> Result<M, ClientError> {
        M::parse(f).map_err(|source| ClientError::Body {
            peer: self.peer.clone(),
            source,
        })
    }

    /// HELLO: returns the features the server granted.
    ///
    /// # Errors
    /// Transport errors, or a non-success status.
    pub async fn hello(
        &mut self,
        agent: &str,
        features: &[Feature],
    ) -> Result<Vec<Feature>, ClientError> {
        let opaque = self.next_opaque();
        let req = Hello {
            opaque,
            agent: Bytes::copy_from_slice(agent.as_bytes()),
            features: features.to_vec(),
        };
        let f = self.call_ok(&req).await?;
        Ok(self.parse::<HelloResponse>(&f)?.features)
    }

    /// SASL_LIST_MECHS.
    ///
    /// # Errors
    /// Transport errors, or a non-success status.
    pub async fn sasl_mechs(&mut self) -> Result<Vec<String>, ClientError> {
        let opaque = self.next_opaque();
        let f = self
            .call_ok(&BareRequest::new(Opcode::SaslListMechs, Vbid(0), opaque))
            .await?;
        let r: SaslMechsResponse = self.parse(&f)?;
        Ok(r.mechanisms()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .collect())
    }

    fn auth_error(&self, user: &str, mechanism: &str, status: Status) -> ClientError {
        ClientError::Auth {
            peer: self.peer.clone(),
            user: user.to_string(),
            mechanism: mechanism.to_string(),
            status,
        }
    }

    /// SASL PLAIN.
    ///
    /// # Errors
    /// [`ClientError::Auth`] when refused, or transport errors.
    pub async fn auth_plain(&mut self, creds: &Credentials) -> Result<(), ClientError> {
        let opaque = self.next_opaque();
        let req = SaslAuth::plain(opaque, creds.user.as_bytes(), creds.password.as_bytes());
        let f = self.call(&req).await?;
        if f.status().is_success() {
            Ok(())
        } else {
            Err(self.auth_error(&creds.user, "PLAIN", f.status()))
        }
    }

    /// SASL SCRAM with the given mechanism; verifies the server's signature.
    ///
    /// # Errors
    /// [`ClientError::Auth`] when refused, [`ClientError::Scram`] when the server's
    /// messages are wrong, or transport errors.
    pub async fn auth_scram(
        &mut self,
        mech: ScramMech,
        creds: &Credentials,
    ) -> Result<(), ClientError> {
        let nonce: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        let (mut scram, first) = ScramClient::first(mech, &creds.user, &creds.password, &nonce);
        let opaque = self.next_opaque();
        let step1 = SaslAuth {
            opcode: Opcode::SaslAuth,
            opaque,
            mechanism: Bytes::from_static(mech.name().as_bytes()),
            data: Bytes::from(first.into_bytes()),
        };
        let f = self.call(&step1).await?;
        if f.status() != Status::AuthContinue {
            return Err(self.auth_error(&creds.user, mech.name(), f.status()));
        }
        let fin = scram
            .final_message(f.value())
            .map_err(|source| ClientError::Scram {
                peer: self.peer.clone(),
                source,
            })?;
        let opaque = self.next_opaque();
        let step2 = SaslAuth {
            opcode: Opcode::SaslStep,
            opaque,
            mechanism: Bytes::from_static(mech.name().as_bytes()),
            data: Bytes::from(fin.into_bytes()),
        };
        let f = self.call(&step2).await?;
        if !f.status().is_success() {
            return Err(self.auth_error(&creds.user, mech.name(), f.status()));
        }
        scram
            .verify(f.value())
            .map_err(|source| ClientError::Scram {
                peer: self.peer.clone(),
                source,
            })
    }

    /// SELECT_BUCKET.
    ///
    /// # Errors
    /// Transport errors, or a non-success status (EACCESS for a missing bucket).
    pub async fn select_bucket(&mut self, bucket: &str) -> Result<(), ClientError> {
        let opaque = self.next_opaque();
        let req = SelectBucket {
            opaque,
            bucket: Bytes::copy_from_slice(bucket.as_bytes()),
        };
        self.call_ok(&req).await.map(drop)
    }

    /// DCP_OPEN with the given name, flags and optional JSON value.
    ///
    /// # Errors
    /// Transport errors, or a non-success status.
    pub async fn dcp_open(
        &mut self,
        name: &str,
        flags: OpenFlags,
        value: &[u8],
    ) -> Result<(), ClientError> {
        let opaque = self.next_opaque();
        let req = Open {
            opaque,
            flags,
            name: Bytes::copy_from_slice(name.as_bytes()),
            value: Bytes::copy_from_slice(value),
        };
        self.call_ok(&req).await.map(drop)
    }

    /// SET_VBUCKET (0x3d).
    ///
    /// # Errors
    /// Transport errors, or a non-success status.
    pub async fn set_vbucket(&mut self, vb: Vbid, state: VbState) -> Result<(), ClientError> {
        let opaque = self.next_opaque();
        let req = SetVbucket {
            vbucket: vb,
            opaque,
            state,
            value: Bytes::new(),
        };
        self.call_ok(&req).await.map(drop)
    }

    /// STAT of a group: every (key, value) pair up to the terminator.
    ///
    /// # Errors
    /// Transport errors, or a non-success status.
    pub async fn stats(&mut self, group: &str) -> Result<Vec<(String, String)>, ClientError> {
        let opaque = self.next_opaque();
        self.send(&Stat::group(opaque, group)).await?;
        let mut out = Vec::new();
        loop {
            let f = self.read_frame("STAT").await?;
            if !f.is_client_response(Opcode::Stat) || f.opaque() != opaque {
                return Err(ClientError::Unexpected {
                    peer: self.peer.clone(),
                    expected: Opcode::Stat,
                    opaque,
                    got: f.opcode(),
                    got_magic: f.magic(),
                });
            }
            if !f.status().is_success() {
                return Err(self.status_error(&f));
            }
            let r: StatResponse = self.parse(&f)?;
            if r.is_terminator() {
                return Ok(out);
            }
            out.push((
                String::from_utf8_lossy(&r.key).into_owned(),
                String::from_utf8_lossy(&r.value).into_owned(),
            ));
        }
    }

    /// GET: `Ok(None)` for KEY_ENOENT.
    ///
    /// # Errors
    /// Transport errors, or another non-success status.
    pub async fn get(&mut self, vb: Vbid, key: &[u8]) -> Result<Option<GetResponse>, ClientError> {
        let opaque = self.next_opaque();
        let req = Get {
            opcode: Opcode::Get,
            vbucket: vb,
            opaque,
            key: Bytes::copy_from_slice(key),
        };
        let f = self.call(&req).await?;
        match f.status() {
            Status::Success => Ok(Some(self.parse(&f)?)),
            Status::KeyEnoent => Ok(None),
            _ => Err(self.status_error(&f)),
        }
    }

    /// SET (or ADD/REPLACE via `opcode`) with flags, expiry, CAS and datatype.
    ///
    /// # Errors
    /// Transport errors, or a non-success status.
    #[allow(clippy::too_many_arguments)]
    pub async fn store(
        &mut self,
        opcode: Opcode,
        vb: Vbid,
        key: &[u8],
        value: &[u8],
        flags: u32,
        expiry: u32,
        cas: Cas,
        datatype: Datatype,
    ) -> Result<MutationResponse, ClientError> {
        let opaque = self.next_opaque();
        let req = Store {
            opcode,
            vbucket: vb,
            opaque,
            cas,
            datatype,
            flags,
            expiry,
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
        };
        let f = self.call_ok(&req).await?;
        self.parse(&f)
    }

    /// DELETE.
    ///
    /// # Errors
    /// Transport errors, or a non-success status.
    pub async fn delete(&mut self, vb: Vbid, key: &[u8]) -> Result<MutationResponse, ClientError> {
        let opaque = self.next_opaque();
        let req = mcbp::kv::Delete {
            opcode: Opcode::Delete,
            vbucket: vb,
            opaque,
            cas: Cas(0),
            key: Bytes::copy_from_slice(key),
        };
        let f = self.call_ok(&req).await?;
        self.parse(&f)
    }

    /// SEQNO_PERSISTENCE (0xb7): `Ok(true)` once persisted, `Ok(false)` on the
    /// node's ETMPFAIL (not yet).
    ///
    /// # Errors
    /// Transport errors, or another non-success status.
    pub async fn seqno_persistence(&mut self, vb: Vbid, seqno: Seqno) -> Result<bool, ClientError> {
        let opaque = self.next_opaque();
        let f = self
            .call(&SeqnoPersistence {
                vbucket: vb,
                opaque,
                seqno,
            })
            .await?;
        match f.status() {
            Status::Success => Ok(true),
            Status::Etmpfail => Ok(false),
            _ => Err(self.status_error(&f)),
        }
    }

    /// GET_FAILOVER_LOG (0x96).
    ///
    /// # Errors
    /// Transport errors, or a non-success status.
    pub async fn failover_log(&mut self, vb: Vbid) -> Result<Vec<FailoverEntry>, ClientError> {
        let opaque = self.next_opaque();
        let f = self
            .call_ok(&BareRequest::new(Opcode::GetFailoverLog, vb, opaque))
            .await?;
        Ok(self.parse::<FailoverLogResponse>(&f)?.entries)
    }

    /// Any status-only request (tests, tools).
    ///
    /// # Errors
    /// Transport errors.
    pub async fn call_response<M: Message>(&mut self, req: &M) -> Result<Response, ClientError> {
        let f = self.call(req).await?;
        self.parse(&f)
    }
}
