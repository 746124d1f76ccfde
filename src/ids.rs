//! The identifiers that travel between the parts: entry names, artifact ids and fingerprints.
//!
//! Each is a newtype validated once, at construction, so that a wrong string cannot reach the
//! catalog, the store or a remote key, and the rule for what is valid exists in exactly one place
//! (docs/DESIGN.md, "Identifiers"). A value read back from disk goes through the same constructor:
//! one that does not validate is treated as absent (a miss), never trusted.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest entry name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// How much of a refused name an error message repeats.
const SHOWN_NAME_CHARS: usize = 80;

/// Why an entry name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid entry name {shown}: {reason}; a name is visible text without white space or `\\`, \
     with `/` only between parts, as in `plugins/foo`"
)]
pub struct NameError {
    /// The refused name, quoted, escaped and cut to a readable length.
    pub shown: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The name of a cache entry (`bundle`, `plugins/foo`): a catalog key users choose.
///
/// A `/` between plain parts is a namespace. Names never become paths (lock files and remote
/// keys use digests of them), but anything that looks like a path escape, carries white space or
/// invisible characters, or is not in Unicode normal form C is refused, because two names that
/// look identical must be the same entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EntryName(String);

impl EntryName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, NameError> {
        match name_problem(name) {
            Some(reason) => Err(NameError {
                shown: shown(name),
                reason,
            }),
            None => Ok(Self(name.to_string())),
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The first problem with `name`, if any.
fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Some("it is longer than 255 bytes");
    }
    if name.chars().any(char::is_control) {
        return Some("it contains a control character");
    }
    if name.chars().any(is_invisible) {
        return Some(
            "it contains an invisible or direction-changing character (zero-width, bidirectional \
             override), which would make two different names look the same",
        );
    }
    if name.chars().any(char::is_whitespace) {
        return Some("it contains white space");
    }
    if name.contains('\\') {
        return Some("it contains a backslash (a path separator on Windows)");
    }
    if name.starts_with('/') || name.ends_with('/') {
        return Some("it starts or ends with `/` like a path");
    }
    for part in name.split('/') {
        match part {
            "" => return Some("it has an empty part (`//`)"),
            "." | ".." => return Some("it has a `.` or `..` part like a path"),
            _ => {}
        }
    }
    if name.split('/').any(|part| {
        part.chars()
            .next()
            .is_some_and(unicode_normalization::char::is_combining_mark)
    }) {
        return Some("a part starts with a combining mark, which has no letter to sit on");
    }
    if !unicode_normalization::is_nfkc(name) {
        return Some(
            "it is not in Unicode normal form KC (a separately typed accent, a full-width letter \
             or a ligature looks like another name); retype it, or normalise it to NFKC",
        );
    }
    if is_hex_digest(name) {
        return Some("it looks like an artifact id (64 hex digits), which commands would take it for");
    }
    None
}

/// Characters that render as nothing or reorder text: Unicode's default-ignorable code points
/// (zero-width spaces and joiners, bidirectional marks, embeddings, overrides and isolates, the
/// word joiner, the byte-order mark, variation selectors, Hangul fillers, tag characters).
/// Listed by hand because the standard library has no "default ignorable" query.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}'
            | '\u{034f}'
            | '\u{061c}'
            | '\u{115f}'..='\u{1160}'
            | '\u{17b4}'..='\u{17b5}'
            | '\u{180b}'..='\u{180f}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{3164}'
            | '\u{fe00}'..='\u{fe0f}'
            | '\u{feff}'
            | '\u{ffa0}'
            | '\u{fff0}'..='\u{fff8}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0000}'..='\u{e0fff}'
    )
}

/// A name quoted and escaped for a message, cut if long.
fn shown(name: &str) -> String {
    let escaped: String = name.chars().flat_map(char::escape_debug).collect();
    if escaped.chars().count() > SHOWN_NAME_CHARS {
        let cut: String = escaped.chars().take(SHOWN_NAME_CHARS).collect();
        format!("\"{cut}…\" ({} bytes)", name.len())
    } else {
        format!("\"{escaped}\"")
    }
}

/// Whether `s` is 64 lowercase hex digits: the form of a BLAKE3 digest in hex.
fn is_hex_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Why a digest-shaped identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{shown} is not {what} (64 lowercase hex digits)")]
pub struct DigestError {
    /// The refused value, quoted and cut.
    pub shown: String,
    /// What was expected.
    pub what: &'static str,
}

/// An artifact's id: the BLAKE3 digest (hex) of its manifest, which names its directory in the
/// store. Equal ids mean equal content.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ArtifactId(String);

/// A recipe's fingerprint: the BLAKE3 digest (hex) of everything a build depends on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fingerprint(String);

impl ArtifactId {
    /// Validates an artifact id.
    pub fn new(s: &str) -> Result<Self, DigestError> {
        digest(s, "an artifact id").map(Self)
    }

    /// The id of a BLAKE3 digest.
    pub fn from_hash(hash: &blake3::Hash) -> Self {
        Self(hash.to_hex().to_string())
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Fingerprint {
    /// Validates a fingerprint.
    pub fn new(s: &str) -> Result<Self, DigestError> {
        digest(s, "a fingerprint").map(Self)
    }

    /// The fingerprint of a BLAKE3 digest.
    pub fn from_hash(hash: &blake3::Hash) -> Self {
        Self(hash.to_hex().to_string())
    }

    /// The fingerprint as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn digest(s: &str, what: &'static str) -> Result<String, DigestError> {
    if is_hex_digest(s) {
        Ok(s.to_string())
    } else {
        Err(DigestError {
            shown: shown(s),
            what,
        })
    }
}

/// The string conversions every identifier shares.
macro_rules! string_id {
    ($ty:ident, $err:ty) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl FromStr for $ty {
            type Err = $err;
            fn from_str(s: &str) -> Result<Self, $err> {
                Self::new(s)
            }
        }
        impl TryFrom<String> for $ty {
            type Error = $err;
            fn try_from(s: String) -> Result<Self, $err> {
                Self::new(&s)
            }
        }
        impl From<$ty> for String {
            fn from(id: $ty) -> String {
                id.0
            }
        }
        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
    };
}

string_id!(EntryName, NameError);
string_id!(ArtifactId, DigestError);
string_id!(Fingerprint, DigestError);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_namespaced_names_and_refuses_paths_space_and_lookalikes() {
        for ok in ["a", "plugins/foo", "models/llama-3.1@q4", "x_y+z:1", "caf\u{e9}"] {
            assert!(EntryName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "/abs",
            "a/",
            "a//b",
            "a/../b",
            "a\\b",
            "a\nb",
            "a\u{7f}",
            "a b",
            ".",
            " a",
            "a\u{200b}b",
            "a\u{202e}b",
            "cafe\u{301}",
            "a\u{3164}",
            "a\u{e0041}b",
            "\u{301}",
            "a/\u{301}",
            "\u{ff21}\u{ff22}",
            "\u{fb01}",
        ] {
            assert!(EntryName::new(bad).is_err(), "{bad:?}");
        }
        let id_like = blake3::hash(b"x").to_hex().to_string();
        assert!(EntryName::new(&id_like).is_err(), "an artifact id is not a name");
        assert!(EntryName::new(&"x".repeat(256)).is_err());
    }

    #[test]
    fn long_names_are_cut_in_messages() {
        let err = EntryName::new(&format!("{} x", "a".repeat(5000))).unwrap_err();
        let msg = err.to_string();
        assert!(msg.len() < 400, "{msg}");
        assert!(msg.contains("5002 bytes"), "{msg}");
    }

    #[test]
    fn digests_are_64_lowercase_hex() {
        let hash = blake3::hash(b"x");
        let id = ArtifactId::from_hash(&hash);
        assert_eq!(ArtifactId::new(id.as_str()), Ok(id.clone()));
        assert!(ArtifactId::new(&id.as_str().to_uppercase()).is_err());
        assert!(Fingerprint::new("abc").is_err());
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<ArtifactId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<ArtifactId>("\"nope\"").is_err());
    }
}
