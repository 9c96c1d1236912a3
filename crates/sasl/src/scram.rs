//! What both sides of a SCRAM exchange share: the mechanisms, the hash, HMAC and
//! PBKDF2 primitives (RustCrypto), and the credential a server stores.

use hmac::digest::Digest;
use hmac::{Hmac, Mac};

/// The SCRAM mechanisms, strongest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScramMech {
    /// SCRAM-SHA512.
    Sha512,
    /// SCRAM-SHA256.
    Sha256,
    /// SCRAM-SHA1.
    Sha1,
}

impl ScramMech {
    /// Every mechanism, strongest first.
    pub const ALL: [ScramMech; 3] = [ScramMech::Sha512, ScramMech::Sha256, ScramMech::Sha1];

    /// The SASL mechanism name (no dash between SHA and the digits).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ScramMech::Sha512 => "SCRAM-SHA512",
            ScramMech::Sha256 => "SCRAM-SHA256",
            ScramMech::Sha1 => "SCRAM-SHA1",
        }
    }

    /// Parses a SASL mechanism name.
    #[must_use]
    pub fn parse(name: &[u8]) -> Option<ScramMech> {
        ScramMech::ALL
            .into_iter()
            .find(|m| m.name().as_bytes() == name)
    }
}

/// Iterations used when deriving stored credentials.
pub const ITERATIONS: u32 = 4096;

/// What the server keeps for one user and mechanism (never the password).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramCredential {
    /// Salt.
    pub salt: Vec<u8>,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// H(ClientKey).
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: Vec<u8>,
}

/// Runs `$body` with `$d` bound to the digest type of `$mech`. RustCrypto's generic
/// bounds for HMAC are unwieldy; three concrete expansions are clearer.
macro_rules! with_digest {
    ($mech:expr, $d:ident => $body:expr) => {
        match $mech {
            ScramMech::Sha512 => {
                type $d = sha2::Sha512;
                $body
            }
            ScramMech::Sha256 => {
                type $d = sha2::Sha256;
                $body
            }
            ScramMech::Sha1 => {
                type $d = sha1::Sha1;
                $body
            }
        }
    };
}

/// HMAC with the mechanism's hash.
pub fn mech_hmac(mech: ScramMech, key: &[u8], msg: &[u8]) -> Vec<u8> {
    with_digest!(mech, D => {
        let mut mac =
            <Hmac<D> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
        mac.update(msg);
        mac.finalize().into_bytes().to_vec()
    })
}

/// The mechanism's hash.
pub fn mech_hash(mech: ScramMech, data: &[u8]) -> Vec<u8> {
    with_digest!(mech, D => D::digest(data).to_vec())
}

/// PBKDF2-HMAC of the password: the SCRAM SaltedPassword.
pub fn salted_password(mech: ScramMech, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    with_digest!(mech, D => {
        let mut out = vec![0u8; <D as Digest>::output_size()];
        pbkdf2::pbkdf2_hmac::<D>(password, salt, iterations, &mut out);
        out
    })
}

impl ScramCredential {
    /// Derives the stored credential for `password` with this salt.
    #[must_use]
    pub fn derive(mech: ScramMech, password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = salted_password(mech, password.as_bytes(), salt, iterations);
        let client_key = mech_hmac(mech, &salted, b"Client Key");
        ScramCredential {
            salt: salt.to_vec(),
            iterations,
            stored_key: mech_hash(mech, &client_key),
            server_key: mech_hmac(mech, &salted, b"Server Key"),
        }
    }
}
