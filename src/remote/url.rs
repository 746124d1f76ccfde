//! `s3://bucket/prefix/key` URLs: what a user types to name a place in object storage.

use std::fmt;

/// An example shown in every parse error, so the user sees the expected shape.
const EXAMPLE: &str = "s3://my-bucket/team/site-a/node_modules";

/// Why a remote URL was rejected.
#[derive(Debug, thiserror::Error)]
#[error("invalid remote URL `{url}`: {reason}; expected something like `{EXAMPLE}`")]
pub struct UrlError {
    /// The URL as given.
    pub url: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A parsed `s3://bucket/prefix` URL.
///
/// The prefix (possibly empty) is an object key or key prefix inside the bucket, without leading
/// or trailing slashes. The endpoint, region and credentials are not part of the URL: they come
/// from the AWS environment (see [`super::RemoteSettings`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RemoteUrl {
    bucket: String,
    key: String,
}

impl RemoteUrl {
    /// Parses `s3://bucket[/prefix/...]`.
    ///
    /// Rejects other schemes, a missing or malformed bucket name, empty path segments (`a//b`)
    /// and `.`/`..` segments, which object stores treat inconsistently.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let err = |reason: String| UrlError {
            url: url.to_owned(),
            reason,
        };
        let Some(rest) = url.strip_prefix("s3://") else {
            let reason = match url.split_once("://") {
                Some((scheme, _)) => format!("the scheme `{scheme}://` is not supported, use `s3://`"),
                None => "it does not start with `s3://`".to_owned(),
            };
            return Err(err(reason));
        };
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(err("the bucket name is missing".to_owned()));
        }
        if let Some(reason) = bucket_problem(bucket) {
            return Err(err(format!("bucket name `{bucket}` {reason}")));
        }
        let key = key.trim_end_matches('/');
        if !key.is_empty() {
            for segment in key.split('/') {
                match segment {
                    "" => return Err(err("the path contains an empty segment (`//`)".to_owned())),
                    "." | ".." => {
                        return Err(err(format!("the path contains a `{segment}` segment")));
                    }
                    s if s.chars().any(char::is_control) => {
                        return Err(err("the path contains a control character".to_owned()));
                    }
                    _ => {}
                }
            }
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key (or key prefix) inside the bucket; empty for the bucket's root.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The key of `relative` below this URL's key, e.g. `prefix/relative`.
    pub fn join(&self, relative: &str) -> String {
        let relative = relative.trim_start_matches('/');
        if self.key.is_empty() {
            relative.to_owned()
        } else {
            format!("{}/{relative}", self.key)
        }
    }
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.key)
        }
    }
}

impl std::str::FromStr for RemoteUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Checks a bucket name against the rules every S3-compatible store accepts (a lenient form of
/// AWS's: 3 to 63 characters of lowercase letters, digits, dots, hyphens and underscores,
/// starting and ending with a letter or digit).
fn bucket_problem(bucket: &str) -> Option<&'static str> {
    if !(3..=63).contains(&bucket.len()) {
        return Some("must be 3 to 63 characters long");
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        return Some("may only contain lowercase letters, digits, `.`, `-` and `_`");
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bucket.as_bytes()[0]) || !alnum(bucket.as_bytes()[bucket.len() - 1]) {
        return Some("must start and end with a letter or digit");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_and_key() {
        let url = RemoteUrl::parse("s3://my-bucket/team/site-a/").unwrap();
        assert_eq!(url.bucket(), "my-bucket");
        assert_eq!(url.key(), "team/site-a");
        assert_eq!(url.to_string(), "s3://my-bucket/team/site-a");
        assert_eq!(url.join("pointer.json"), "team/site-a/pointer.json");

        let root = RemoteUrl::parse("s3://bucket").unwrap();
        assert_eq!(root.key(), "");
        assert_eq!(root.join("x"), "x");
        assert_eq!(root.to_string(), "s3://bucket");
    }

    #[test]
    fn errors_name_the_url_and_show_an_example() {
        for (url, fragment) in [
            ("https://bucket/key", "scheme `https://`"),
            ("bucket/key", "does not start with `s3://`"),
            ("s3:///key", "bucket name is missing"),
            ("s3://Bucket/key", "lowercase"),
            ("s3://ab/key", "3 to 63"),
            ("s3://bucket/a//b", "empty segment"),
            ("s3://bucket/a/../b", "`..` segment"),
        ] {
            let message = RemoteUrl::parse(url).unwrap_err().to_string();
            assert!(message.contains(url), "{message}");
            assert!(message.contains(fragment), "{message}");
            assert!(message.contains(EXAMPLE), "{message}");
        }
    }
}
