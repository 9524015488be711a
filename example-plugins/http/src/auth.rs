//! The `auth` config key shared by the webhook actor and the poll source, as upstream's webhook
//! actor writes it:
//!
//! ```yaml
//! auth: { type: bearer, token: "${HOOK_TOKEN}" }
//! auth: { type: basic, username: bot, password: "${HOOK_PASSWORD}" }
//! ```
//!
//! Base64 for `basic` is written out here (a dozen lines) rather than pulling in a crate for it.

use std::fmt;

use serde::Deserialize;

/// How to authenticate to the remote end. Its `Debug` output never shows the secrets.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Auth {
    /// `authorization: Bearer <token>`.
    Bearer {
        /// The token.
        token: String,
    },
    /// `authorization: Basic base64(<username>:<password>)`.
    Basic {
        /// The user name; it may not contain `:`.
        username: String,
        /// The password.
        password: String,
    },
}

impl Auth {
    /// Refuses values that would send a useless header, typically an unset `${VAR}`.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Auth::Bearer { token } if token.is_empty() => Err("auth.token is empty".into()),
            Auth::Basic { username, .. } if username.is_empty() => {
                Err("auth.username is empty".into())
            }
            Auth::Basic { username, .. } if username.contains(':') => {
                Err("auth.username may not contain ':' (basic auth separates it with one)".into())
            }
            _ => Ok(()),
        }
    }

    /// The `authorization` header value.
    pub fn header_value(&self) -> String {
        match self {
            Auth::Bearer { token } => format!("Bearer {token}"),
            Auth::Basic { username, password } => {
                format!(
                    "Basic {}",
                    base64(format!("{username}:{password}").as_bytes())
                )
            }
        }
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Bearer { .. } => f.write_str("Bearer(<redacted>)"),
            Auth::Basic { username, .. } => write!(f, "Basic({username}:<redacted>)"),
        }
    }
}

/// Standard base64 (RFC 4648, with padding).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("Aladdin:open sesame", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
            ("ü:ß", "w7w6w58="),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
    }

    #[test]
    fn header_values() {
        let bearer: Auth =
            serde_json::from_value(json!({"type": "bearer", "token": "t0k"})).unwrap();
        assert_eq!(bearer.header_value(), "Bearer t0k");
        let basic: Auth = serde_json::from_value(
            json!({"type": "basic", "username": "alice", "password": "s3cret"}),
        )
        .unwrap();
        assert_eq!(basic.header_value(), "Basic YWxpY2U6czNjcmV0");
    }

    #[test]
    fn debug_hides_secrets() {
        let basic = Auth::Basic {
            username: "alice".into(),
            password: "s3cret".into(),
        };
        let bearer = Auth::Bearer {
            token: "t0k".into(),
        };
        assert_eq!(format!("{basic:?}"), "Basic(alice:<redacted>)");
        assert_eq!(format!("{bearer:?}"), "Bearer(<redacted>)");
    }

    #[test]
    fn bad_auth_is_refused() {
        let parse = |v| serde_json::from_value::<Auth>(v).map_err(|e| e.to_string());
        assert!(parse(json!({"type": "digest", "token": "x"}))
            .unwrap_err()
            .contains("unknown variant `digest`"));
        assert!(parse(json!({"type": "bearer"}))
            .unwrap_err()
            .contains("missing field `token`"));
        assert!(parse(json!({"type": "basic", "username": "a"}))
            .unwrap_err()
            .contains("missing field `password`"));
        assert!(parse(json!({"type": "bearer", "token": "x", "user": "y"}))
            .unwrap_err()
            .contains("unknown field `user`"));
        assert!(parse(json!({"token": "x"}))
            .unwrap_err()
            .contains("missing field `type`"));
        assert_eq!(
            parse(json!({"type": "bearer", "token": ""}))
                .unwrap()
                .check(),
            Err("auth.token is empty".into())
        );
        let colon = parse(json!({"type": "basic", "username": "a:b", "password": "p"}));
        assert!(colon
            .unwrap()
            .check()
            .unwrap_err()
            .contains("may not contain ':'"));
    }
}
