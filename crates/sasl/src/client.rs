//! SCRAM-SHA1/256/512 client exchange (RFC 5802, no channel binding).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use crate::scram::{mech_hash, mech_hmac, salted_password, ScramMech};

/// Why a client-side SCRAM exchange failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScramClientError {
    /// The server's message does not follow RFC 5802.
    #[error("malformed server SCRAM message: {0}")]
    Malformed(&'static str),
    /// The server's nonce does not extend ours.
    #[error("server nonce does not extend the client nonce")]
    Nonce,
    /// The server could not prove it knows our credential.
    #[error("server signature does not verify")]
    ServerSignature,
}

/// A client exchange: [`ScramClient::first`], then [`ScramClient::final_message`]
/// with the server-first message, then [`ScramClient::verify`] with the server-final.
#[derive(Debug)]
pub struct ScramClient {
    mech: ScramMech,
    password: String,
    client_first_bare: String,
    nonce: String,
    expected_server_signature: Option<Vec<u8>>,
}

impl ScramClient {
    /// Starts an exchange; returns the client and the client-first message.
    /// `nonce` must be fresh random printable text without commas.
    #[must_use]
    pub fn first(
        mech: ScramMech,
        user: &str,
        password: &str,
        nonce: &str,
    ) -> (ScramClient, String) {
        let user = user.replace('=', "=3D").replace(',', "=2C");
        let bare = format!("n={user},r={nonce}");
        let msg = format!("n,,{bare}");
        (
            ScramClient {
                mech,
                password: password.to_string(),
                client_first_bare: bare,
                nonce: nonce.to_string(),
                expected_server_signature: None,
            },
            msg,
        )
    }

    /// Answers the server-first message with the client-final message.
    ///
    /// # Errors
    /// [`ScramClientError`] when the server message is malformed or its nonce is wrong.
    pub fn final_message(&mut self, server_first: &[u8]) -> Result<String, ScramClientError> {
        let text = std::str::from_utf8(server_first)
            .map_err(|_| ScramClientError::Malformed("not UTF-8"))?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for p in text.split(',') {
            if let Some(r) = p.strip_prefix("r=") {
                nonce = Some(r);
            } else if let Some(s) = p.strip_prefix("s=") {
                salt = B64.decode(s).ok();
            } else if let Some(i) = p.strip_prefix("i=") {
                iterations = i.parse::<u32>().ok();
            }
        }
        let nonce = nonce.ok_or(ScramClientError::Malformed("no nonce"))?;
        let salt = salt.ok_or(ScramClientError::Malformed("no salt"))?;
        let iterations = iterations
            .filter(|i| (1..=10_000_000).contains(i))
            .ok_or(ScramClientError::Malformed("bad iteration count"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramClientError::Nonce);
        }
        let salted = salted_password(self.mech, self.password.as_bytes(), &salt, iterations);
        let client_key = mech_hmac(self.mech, &salted, b"Client Key");
        let stored_key = mech_hash(self.mech, &client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth = format!("{},{text},{without_proof}", self.client_first_bare);
        let signature = mech_hmac(self.mech, &stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = mech_hmac(self.mech, &salted, b"Server Key");
        self.expected_server_signature = Some(mech_hmac(self.mech, &server_key, auth.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final message (`v=…`).
    ///
    /// # Errors
    /// [`ScramClientError::ServerSignature`] when it does not verify.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), ScramClientError> {
        let text = std::str::from_utf8(server_final)
            .map_err(|_| ScramClientError::Malformed("not UTF-8"))?;
        let v = text
            .split(',')
            .find_map(|p| p.strip_prefix("v="))
            .and_then(|v| B64.decode(v).ok())
            .ok_or(ScramClientError::Malformed("no server signature"))?;
        match &self.expected_server_signature {
            Some(e) if *e == v => Ok(()),
            _ => Err(ScramClientError::ServerSignature),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 §3 test vector for SCRAM-SHA-256, from the client side.
    #[test]
    fn rfc7677_sha256_client_messages() {
        let (mut c, first) =
            ScramClient::first(ScramMech::Sha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(first, "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let fin = c
            .final_message(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .expect("server-first is well formed");
        assert_eq!(fin, "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        c.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .expect("server proves itself");
        assert_eq!(c.verify(b"v=AAAA"), Err(ScramClientError::ServerSignature));
    }

    #[test]
    fn a_server_nonce_that_does_not_extend_ours_is_refused() {
        let (mut c, _) = ScramClient::first(ScramMech::Sha1, "u", "p", "abc");
        assert_eq!(
            c.final_message(b"r=xyz,s=AAAA,i=10"),
            Err(ScramClientError::Nonce)
        );
        assert_eq!(
            c.final_message(b"r=abc,s=AAAA,i=10"),
            Err(ScramClientError::Nonce)
        );
        assert!(c.final_message(b"r=abcd,s=AAAA,i=0").is_err());
    }
}
