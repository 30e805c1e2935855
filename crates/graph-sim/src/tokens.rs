//! Opaque `$skiptoken`/`$deltatoken` values: base64url of a small JSON document.
//! Clients must treat them as opaque and follow links verbatim, as with Graph.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::schema::Resource;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k")]
pub enum Token {
    /// A deltaLink: the tenant version the next round starts after, when it was
    /// issued, and the query it tracks.
    #[serde(rename = "d")]
    Delta {
        e: u64,
        v: u64,
        t: u64,
        r: Resource,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        s: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        f: Option<Vec<Uuid>>,
    },
    /// A nextLink: a page of a round held server-side.
    #[serde(rename = "s")]
    Skip { e: u64, r: u64, p: u32 },
}

pub fn encode(token: &Token) -> String {
    // Serializing these plain structs cannot fail; an empty token would be refused
    // on use rather than crash the server.
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(token).unwrap_or_default())
}

pub fn decode(s: &str) -> Option<Token> {
    let bytes = URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let d = Token::Delta {
            e: u64::MAX,
            v: 7,
            t: 1_700_000_000_000,
            r: Resource::Groups,
            s: Some(vec!["displayName".into(), "members".into()]),
            f: None,
        };
        let s = encode(&d);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(decode(&s), Some(d));
        let k = Token::Skip { e: 1, r: 2, p: 3 };
        assert_eq!(decode(&encode(&k)), Some(k));
        assert_eq!(decode("not a token"), None);
        assert_eq!(decode("bGF0ZXN0"), None);
    }
}
