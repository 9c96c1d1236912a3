//! SASL PLAIN (RFC 4616): `authzid NUL user NUL password`.

/// Splits a PLAIN message into (user, password); the authzid is ignored. `None`
/// when the message has other than three parts, is not UTF-8, or names no user.
#[must_use]
pub fn parse(msg: &[u8]) -> Option<(String, String)> {
    let mut parts = msg.split(|b| *b == 0);
    let _authzid = parts.next()?;
    let user = std::str::from_utf8(parts.next()?).ok()?;
    let password = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() || user.is_empty() {
        return None;
    }
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_messages_split_into_user_and_password() {
        assert_eq!(parse(b"\0u\0p"), Some(("u".into(), "p".into())));
        assert_eq!(parse(b"z\0u\0"), Some(("u".into(), String::new())));
        assert_eq!(parse(b"\0\0p"), None);
        assert_eq!(parse(b"u\0p"), None);
    }
}
