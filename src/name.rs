//! Entry names: the keys users give artifacts (`import --name`, `ensure NAME`).
//!
//! Names are catalog keys and never become paths (entry lock files are named by a digest), but a
//! name that looks like a path escape (`../x`, `/abs`, `a\b`) is almost always a mistake, so it is
//! refused. A `/` between plain segments is allowed as a namespace (`models/llama`, `drivers/pg`):
//! one mechanism serves many kinds of entries.

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid entry name {name:?}: {reason}; use letters, digits and `-_.+@:`, optionally with `/` \
     between parts as in `plugins/foo`"
)]
pub struct NameError {
    /// The refused name.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The longest name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Checks that `name` is a valid entry name.
pub fn validate(name: &str) -> Result<(), NameError> {
    let refuse = |reason| {
        Err(NameError {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return refuse("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return refuse("it is longer than 255 bytes");
    }
    if name.chars().any(char::is_control) {
        return refuse("it contains a control character");
    }
    if name.contains('\\') {
        return refuse("it contains a backslash (a path separator on Windows)");
    }
    if name.starts_with('/') || name.ends_with('/') {
        return refuse("it starts or ends with `/` like a path");
    }
    for part in name.split('/') {
        match part {
            "" => return refuse("it has an empty part (`//`)"),
            "." | ".." => return refuse("it has a `.` or `..` part like a path"),
            _ => {}
        }
    }
    if name.chars().any(char::is_whitespace) {
        return refuse("it contains white space");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn accepts_namespaced_names_and_refuses_paths() {
        for ok in ["a", "plugins/foo", "models/llama-3.1@q4", "x_y+z:1"] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "../x", "/abs", "a/", "a//b", "a/../b", "a\\b", "a\nb", "a\u{7f}", "a b", ".",
        ] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
        assert!(validate(&"x".repeat(256)).is_err());
    }
}
