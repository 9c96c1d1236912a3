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

/// The node's users.
#[derive(Clone, Debug, Default)]
pub struct Users {
    by_name: HashMap<String, User>,
}

impl Users {
    /// Adds or replaces a user.
    pub fn insert(&mut self, user: User) {
        self.by_name.insert(user.name.clone(), user);
    }

    /// Looks a user up.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&User> {
        self.by_name.get(name)
    }

    /// Checks a name and clear-text password; `None` for an unknown user or a
    /// wrong password (callers must not tell the two apart).
    #[must_use]
    pub fn authenticate(&self, name: &str, password: &str) -> Option<&User> {
        self.get(name).filter(|u| u.check_password(password))
    }

    /// Number of users.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are no users.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_check_and_roles_limit_buckets() {
        let mut users = Users::default();
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
}
