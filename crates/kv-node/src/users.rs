//! Users, roles and authentication decisions.
//!
//! Two roles exist: the node's admin (every bucket, DCP producer and consumer,
//! vbucket control, stats) and bucket users (read/write one bucket). Passwords are
//! never kept: each user holds derived SCRAM credentials, which also check PLAIN.

use std::collections::HashMap;

use rand::RngCore;
use sasl::{ScramCredential, ScramMech, ITERATIONS};

/// What a user may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Key-value reads and writes on one bucket.
    BucketUser {
        /// The bucket.
        bucket: String,
    },
}

/// One user.
#[derive(Clone, Debug)]
pub struct User {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    creds: HashMap<ScramMech, ScramCredential>,
}

impl User {
    /// A user with credentials derived from `password` (fresh random salts).
    #[must_use]
    pub fn new(name: &str, password: &str, role: Role) -> User {
        let mut rng = rand::thread_rng();
        let creds = ScramMech::ALL
            .into_iter()
            .map(|m| {
                let mut salt = [0u8; 16];
                rng.fill_bytes(&mut salt);
                (m, ScramCredential::derive(m, password, &salt, ITERATIONS))
            })
            .collect();
        User {
            name: name.to_string(),
            role,
            creds,
        }
    }

    /// The stored credential for a mechanism.
    #[must_use]
    pub fn credential(&self, mech: ScramMech) -> Option<&ScramCredential> {
        self.creds.get(&mech)
    }

    /// Checks a clear-text password (SASL PLAIN, HTTP basic auth).
    #[must_use]
    pub fn check_password(&self, password: &str) -> bool {
        let Some(c) = self.creds.get(&ScramMech::Sha512) else {
            return false;
        };
        let d = ScramCredential::derive(ScramMech::Sha512, password, &c.salt, c.iterations);
        d.stored_key.len() == c.stored_key.len()
            && d.stored_key
                .iter()
                .zip(&c.stored_key)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// Whether the user may use this bucket for key-value access.
    #[must_use]
    pub fn may_use_bucket(&self, bucket: &str) -> bool {
        match &self.role {
            Role::Admin => true,
            Role::BucketUser { bucket: b } => b == bucket,
        }
    }

    /// DCP, vbucket control and node-wide stats.
    #[must_use]
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// A user as the node persists it: derived SCRAM credentials only (N5).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredUser {
    /// Name.
    pub name: String,
    /// Always `admin` today.
    pub role: String,
    /// Per mechanism (`SCRAM-SHA512` …): salt, iterations, stored and server keys
    /// (hex).
    pub credentials: Vec<StoredCredential>,
}

/// One mechanism's derived credential, hex-encoded.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredCredential {
    /// The mechanism's name.
    pub mechanism: String,
    /// Salt.
    pub salt: String,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// H(ClientKey).
    pub stored_key: String,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: String,
}

impl User {
    /// The persisted form (admin users only).
    #[must_use]
    pub fn to_stored(&self) -> StoredUser {
        StoredUser {
            name: self.name.clone(),
            role: "admin".into(),
            credentials: ScramMech::ALL
                .into_iter()
                .filter_map(|m| {
                    let c = self.creds.get(&m)?;
                    Some(StoredCredential {
                        mechanism: m.name().to_string(),
                        salt: hex::encode(&c.salt),
                        iterations: c.iterations,
                        stored_key: hex::encode(&c.stored_key),
                        server_key: hex::encode(&c.server_key),
                    })
                })
                .collect(),
        }
    }

    /// Back from the persisted form; `None` if it is damaged.
    #[must_use]
    pub fn from_stored(s: &StoredUser) -> Option<User> {
        if s.role != "admin" {
            return None;
        }
        let mut creds = HashMap::new();
        for c in &s.credentials {
            let mech = ScramMech::parse(c.mechanism.as_bytes())?;
            creds.insert(
                mech,
                ScramCredential {
                    salt: hex::decode(&c.salt).ok()?,
                    iterations: c.iterations,
                    stored_key: hex::decode(&c.stored_key).ok()?,
                    server_key: hex::decode(&c.server_key).ok()?,
                },
            );
        }
        creds.contains_key(&ScramMech::Sha512).then(|| User {
            name: s.name.clone(),
            role: Role::Admin,
            creds,
        })
    }
}

/// The node's users: the ones from its start-up configuration, plus the ones the
/// cluster layer manages through the admin API (N5). Lookups clone the user; short
/// critical sections only.
#[derive(Debug, Default)]
pub struct Users {
    by_name: std::sync::RwLock<HashMap<String, User>>,
    /// Passwords PBKDF2 already accepted, as SHA-256 digests, one per user: a client
    /// sending basic auth with every HTTP request must not cost a key derivation
    /// each time. Dropped when the user is replaced or removed.
    checked: std::sync::Mutex<HashMap<String, [u8; 32]>>,
}

fn password_digest(name: &str, password: &str) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(name.as_bytes());
    h.update([0u8]);
    h.update(password.as_bytes());
    h.finalize().into()
}

impl Users {
    /// Adds or replaces a user.
    pub fn insert(&self, user: User) {
        self.forget_checked(&user.name);
        self.write().insert(user.name.clone(), user);
    }

    /// Removes a user; whether it existed.
    pub fn remove(&self, name: &str) -> bool {
        self.forget_checked(name);
        self.write().remove(name).is_some()
    }

    fn forget_checked(&self, name: &str) {
        self.checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
    }

    /// Looks a user up.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<User> {
        self.read().get(name).cloned()
    }

    /// Checks a name and clear-text password; `None` for an unknown user or a
    /// wrong password (callers must not tell the two apart).
    #[must_use]
    pub fn authenticate(&self, name: &str, password: &str) -> Option<User> {
        let user = self.get(name)?;
        let digest = password_digest(name, password);
        let mut checked = self
            .checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if checked.get(name) == Some(&digest) {
            return Some(user);
        }
        drop(checked);
        if !user.check_password(password) {
            return None;
        }
        checked = self
            .checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Only if the user was not replaced meanwhile.
        if self.get(name).is_some_and(|u| u.creds == user.creds) {
            checked.insert(name.to_owned(), digest);
        }
        Some(user)
    }

    /// Number of users.
    #[must_use]
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether there are no users.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, User>> {
        self.by_name
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, User>> {
        self.by_name
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_check_and_roles_limit_buckets() {
        let users = Users::default();
        users.insert(User::new("admin", "pw", Role::Admin));
        users.insert(User::new(
            "b",
            "bpw",
            Role::BucketUser { bucket: "b".into() },
        ));
        assert!(users.authenticate("admin", "pw").is_some());
        assert!(users.authenticate("admin", "nope").is_none());
        assert!(users.authenticate("ghost", "pw").is_none());
        let b = users.get("b").expect("b exists");
        assert!(b.may_use_bucket("b") && !b.may_use_bucket("other") && !b.is_admin());
        assert!(users.get("admin").expect("admin").may_use_bucket("other"));
    }

    #[test]
    fn a_cached_password_stops_working_once_the_user_is_replaced_or_removed() {
        let users = Users::default();
        users.insert(User::new("ops", "old", Role::Admin));
        assert!(users.authenticate("ops", "old").is_some());
        assert!(
            users.authenticate("ops", "old").is_some(),
            "served from the cache"
        );
        users.insert(User::new("ops", "new", Role::Admin));
        assert!(users.authenticate("ops", "old").is_none());
        assert!(users.authenticate("ops", "new").is_some());
        assert!(users.remove("ops"));
        assert!(users.authenticate("ops", "new").is_none());
        // A wrong password is never cached as right.
        users.insert(User::new("x", "right", Role::Admin));
        assert!(users.authenticate("x", "wrong").is_none());
        assert!(users.authenticate("x", "wrong").is_none());
    }

    #[test]
    fn a_stored_user_keeps_only_derived_credentials_and_still_authenticates() {
        let u = User::new("ops", "pw-123", Role::Admin);
        let stored = u.to_stored();
        let text = serde_json::to_string(&stored).expect("json");
        assert!(!text.contains("pw-123"));
        let back = User::from_stored(&serde_json::from_str(&text).expect("parses")).expect("valid");
        assert!(back.check_password("pw-123") && !back.check_password("pw-124"));
        assert!(back.is_admin());
        let mut damaged = stored;
        damaged.credentials[0].salt = "zz".into();
        assert!(User::from_stored(&damaged).is_none());
    }
}
