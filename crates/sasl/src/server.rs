//! SASL SCRAM-SHA1/256/512 server side (RFC 5802, no channel binding), as memcached
//! speaks it (`mcbp-dcp.md` §4.2): SASL_AUTH carries the client-first message and is
//! answered AUTH_CONTINUE with the server-first message; SASL_STEP carries the
//! client-final message and is answered SUCCESS with `v=<server signature>`.
//!
//! The primitives are shared with the client ([`crate::ScramClient`]); the exchange
//! is a small state machine with no I/O.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use crate::scram::{mech_hash, mech_hmac, ScramCredential, ScramMech, ITERATIONS};

/// Equality that does not stop at the first differing byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a SCRAM exchange failed. Every case is answered AUTH_ERROR; the reason is
/// for the log only (it never tells the client whether the user exists).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// The message does not follow RFC 5802.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// Channel binding was requested; we offer none.
    #[error("channel binding is not supported")]
    ChannelBinding,
    /// The nonce in the final message is not ours.
    #[error("nonce mismatch")]
    Nonce,
    /// Unknown user or wrong password.
    #[error("authentication failed for user {user:?}")]
    BadProof {
        /// The user name the client gave.
        user: String,
    },
}

/// A server-side exchange after the client-first message.
#[derive(Debug)]
pub struct ScramServer {
    mech: ScramMech,
    user: String,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    cred: Option<ScramCredential>,
}

fn attr(part: &str, key: char) -> Option<&str> {
    let mut chars = part.chars();
    (chars.next() == Some(key) && chars.next() == Some('=')).then(|| &part[2..])
}

impl ScramServer {
    /// Handles the client-first message. `lookup` returns the user's credential, or
    /// `None` for an unknown user (the exchange then continues with a decoy so the
    /// answer does not reveal which users exist, and fails at the proof).
    /// `server_nonce` must be fresh random printable text.
    ///
    /// # Errors
    /// [`ScramError`] for malformed messages and channel binding.
    pub fn start(
        mech: ScramMech,
        client_first: &[u8],
        server_nonce: &str,
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
    ) -> Result<(ScramServer, String), ScramError> {
        let text =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut parts = text.splitn(3, ',');
        let cb = parts.next().ok_or(ScramError::Malformed("no gs2 header"))?;
        let authzid = parts.next().ok_or(ScramError::Malformed("no gs2 header"))?;
        let bare = parts
            .next()
            .ok_or(ScramError::Malformed("no client-first-bare"))?;
        match cb {
            "n" | "y" => {}
            c if c.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad gs2 channel-binding flag")),
        }
        let mut user = None;
        let mut cnonce = None;
        for p in bare.split(',') {
            if let Some(u) = attr(p, 'n') {
                user = Some(u.replace("=2C", ",").replace("=3D", "="));
            } else if let Some(r) = attr(p, 'r') {
                cnonce = Some(r.to_string());
            } else if p.starts_with("m=") {
                return Err(ScramError::Malformed("mandatory extension"));
            }
        }
        let user = user.ok_or(ScramError::Malformed("no user name"))?;
        let cnonce = cnonce.ok_or(ScramError::Malformed("no client nonce"))?;
        if cnonce.is_empty() {
            return Err(ScramError::Malformed("empty client nonce"));
        }
        let cred = lookup(&user);
        let (salt, iterations) = match &cred {
            Some(c) => (c.salt.clone(), c.iterations),
            // Decoy: a salt derived from the name, stable across attempts.
            None => (mech_hash(mech, user.as_bytes())[..16].to_vec(), ITERATIONS),
        };
        let nonce = format!("{cnonce}{server_nonce}");
        let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(&salt));
        Ok((
            ScramServer {
                mech,
                user,
                gs2_header: format!("{cb},{authzid},"),
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                nonce,
                cred,
            },
            server_first,
        ))
    }

    /// The user name the client gave.
    #[must_use]
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The mechanism in use.
    #[must_use]
    pub fn mech(&self) -> ScramMech {
        self.mech
    }

    /// Handles the client-final message; on success returns the server-final
    /// message (`v=…`).
    ///
    /// # Errors
    /// [`ScramError`] when the message is malformed, the nonce is not ours, or the
    /// proof does not match.
    pub fn finish(self, client_final: &[u8]) -> Result<String, ScramError> {
        let text =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut cbind = None;
        let mut nonce = None;
        for p in without_proof.split(',') {
            if let Some(c) = attr(p, 'c') {
                cbind = Some(c);
            } else if let Some(r) = attr(p, 'r') {
                nonce = Some(r);
            }
        }
        let cbind = cbind.ok_or(ScramError::Malformed("no channel binding attribute"))?;
        if B64.decode(cbind).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::Malformed(
                "channel binding does not repeat the gs2 header",
            ));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Nonce);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let bad = || ScramError::BadProof {
            user: self.user.clone(),
        };
        let cred = self.cred.as_ref().ok_or_else(bad)?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = mech_hmac(self.mech, &cred.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(bad());
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        if !same(&mech_hash(self.mech, &client_key), &cred.stored_key) {
            return Err(bad());
        }
        let server_signature = mech_hmac(self.mech, &cred.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::client::ScramClient;

    fn run(
        mech: ScramMech,
        stored_pw: &str,
        given_pw: &str,
        user_exists: bool,
    ) -> Result<String, ScramError> {
        let cred = ScramCredential::derive(mech, stored_pw, b"0123456789abcdef", 64);
        let (mut client, first) = ScramClient::first(mech, "admin", given_pw, "clientnonce");
        let (server, server_first) =
            ScramServer::start(mech, first.as_bytes(), "servernonce", |u| {
                (user_exists && u == "admin").then(|| cred.clone())
            })?;
        assert!(server_first.starts_with("r=clientnonceservernonce,s="));
        let final_msg = client
            .final_message(server_first.as_bytes())
            .expect("well formed");
        let v = server.finish(final_msg.as_bytes())?;
        client
            .verify(v.as_bytes())
            .expect("server signature verifies");
        Ok(v)
    }

    #[test]
    fn every_mechanism_accepts_the_right_password_and_proves_itself() {
        for mech in ScramMech::ALL {
            run(mech, "secret", "secret", true).expect("right password");
        }
    }

    #[test]
    fn wrong_password_and_unknown_user_both_fail_at_the_proof() {
        for mech in ScramMech::ALL {
            assert!(matches!(
                run(mech, "secret", "wrong", true),
                Err(ScramError::BadProof { .. })
            ));
            assert!(matches!(
                run(mech, "secret", "secret", false),
                Err(ScramError::BadProof { .. })
            ));
        }
    }

    /// RFC 7677 §3 test vector for SCRAM-SHA-256 (user "user", password "pencil").
    #[test]
    fn rfc7677_sha256_vector() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let cred = ScramCredential::derive(ScramMech::Sha256, "pencil", &salt, 4096);
        let first = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
        let (server, sf) = ScramServer::start(
            ScramMech::Sha256,
            first,
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            |_| Some(cred),
        )
        .expect("start");
        assert_eq!(sf, "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
        let v = server
            .finish(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .expect("proof accepted");
        assert_eq!(v, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    #[test]
    fn malformed_messages_and_channel_binding_are_refused() {
        let lookup = |_: &str| None;
        assert_eq!(
            ScramServer::start(ScramMech::Sha1, b"p=tls-unique,,n=a,r=x", "s", lookup).err(),
            Some(ScramError::ChannelBinding)
        );
        assert!(ScramServer::start(ScramMech::Sha1, b"n,,r=x", "s", |_| None).is_err());
        assert!(ScramServer::start(ScramMech::Sha1, b"\xff", "s", |_| None).is_err());
        let (s, _) =
            ScramServer::start(ScramMech::Sha1, b"n,,n=a,r=x", "s", |_| None).expect("start");
        assert_eq!(
            s.finish(b"c=biws,r=other,p=AAAA").err(),
            Some(ScramError::Nonce)
        );
    }
}
