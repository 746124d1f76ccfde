//! `s3://bucket/prefix`, `gs://bucket/prefix` and `az://container/prefix` URLs: what a user
//! types to name a place in object storage.

use std::fmt;

/// An example shown in every parse error, so the user sees the expected shape.
const EXAMPLE: &str = "s3://my-bucket/team/site-a/node_modules";

/// The schemes [`RemoteUrl::parse`] accepts, for error messages.
const SCHEMES: &str = "`s3://` (S3 and compatible stores), `gs://` (Google Cloud Storage) or `az://` \
                       (Azure Blob Storage)";

/// Which object store a [`RemoteUrl`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// AWS S3 or an S3-compatible store (MinIO, R2, Ceph, Garage...): `s3://bucket`.
    S3,
    /// Google Cloud Storage: `gs://bucket`.
    Gcs,
    /// Azure Blob Storage: `az://container`. The storage account is not part of the URL: it
    /// comes from the environment (`AZURE_STORAGE_ACCOUNT_NAME` or a connection string), as in
    /// object_store's own `az://` convention.
    Azure,
}

impl Provider {
    /// The URL scheme, e.g. `gs`.
    pub fn scheme(self) -> &'static str {
        match self {
            Self::S3 => "s3",
            Self::Gcs => "gs",
            Self::Azure => "az",
        }
    }

    /// What the top-level name is called on this store, for messages.
    pub fn bucket_word(self) -> &'static str {
        match self {
            Self::S3 | Self::Gcs => "bucket",
            Self::Azure => "container",
        }
    }
}

/// Why a remote URL was rejected.
#[derive(Debug, thiserror::Error)]
#[error("invalid remote URL `{url}`: {reason}; expected something like `{EXAMPLE}`")]
pub struct UrlError {
    /// The URL as given.
    pub url: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A parsed `s3://bucket/prefix`, `gs://bucket/prefix` or `az://container/prefix` URL.
///
/// The prefix (possibly empty) is an object key or key prefix inside the bucket (or Azure
/// container), without leading or trailing slashes. The endpoint, region, account and
/// credentials are not part of the URL: they come from each cloud's environment (see
/// [`super::RemoteSettings`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RemoteUrl {
    provider: Provider,
    bucket: String,
    key: String,
}

impl RemoteUrl {
    /// Parses `s3://bucket[/prefix/...]`, `gs://bucket[/prefix/...]` or
    /// `az://container[/prefix/...]`.
    ///
    /// Rejects other schemes, a missing or malformed bucket (container) name, empty path
    /// segments (`a//b`) and `.`/`..` segments, which object stores treat inconsistently.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let err = |reason: String| UrlError {
            url: url.to_owned(),
            reason,
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(err(format!("it does not start with {SCHEMES}")));
        };
        let provider = match scheme {
            "s3" => Provider::S3,
            "gs" => Provider::Gcs,
            "az" => Provider::Azure,
            other => {
                return Err(err(format!(
                    "the scheme `{other}://` is not supported, use {SCHEMES}"
                )));
            }
        };
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        let word = provider.bucket_word();
        if bucket.is_empty() {
            return Err(err(format!("the {word} name is missing")));
        }
        let problem = match provider {
            Provider::S3 | Provider::Gcs => bucket_problem(bucket),
            Provider::Azure => container_problem(bucket),
        };
        if let Some(reason) = problem {
            return Err(err(format!("{word} name `{bucket}` {reason}")));
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
            provider,
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }

    /// Which object store this URL names.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// The bucket name (the container name for Azure).
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
        let scheme = self.provider.scheme();
        if self.key.is_empty() {
            write!(f, "{scheme}://{}", self.bucket)
        } else {
            write!(f, "{scheme}://{}/{}", self.bucket, self.key)
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

/// Checks an Azure container name: 3 to 63 characters of lowercase letters, digits and
/// hyphens, starting and ending with a letter or digit, without two hyphens in a row (Azure's
/// rules; anything else is refused by the service with a less helpful message).
fn container_problem(container: &str) -> Option<&'static str> {
    if !(3..=63).contains(&container.len()) {
        return Some("must be 3 to 63 characters long");
    }
    if !container
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some("may only contain lowercase letters, digits and `-`");
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(container.as_bytes()[0]) || !alnum(container.as_bytes()[container.len() - 1]) {
        return Some("must start and end with a letter or digit");
    }
    if container.contains("--") {
        return Some("may not contain two hyphens in a row");
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
        assert_eq!(root.provider(), Provider::S3);
    }

    #[test]
    fn parses_gcs_and_azure() {
        let gs = RemoteUrl::parse("gs://my_bucket.example/team/").unwrap();
        assert_eq!(gs.provider(), Provider::Gcs);
        assert_eq!(gs.bucket(), "my_bucket.example");
        assert_eq!(gs.to_string(), "gs://my_bucket.example/team");
        assert_eq!(gs.join("p"), "team/p");

        let az = RemoteUrl::parse("az://cache-01/a/b").unwrap();
        assert_eq!(az.provider(), Provider::Azure);
        assert_eq!(az.bucket(), "cache-01");
        assert_eq!(az.to_string(), "az://cache-01/a/b");
        assert_ne!(az, RemoteUrl::parse("s3://cache-01/a/b").unwrap());
    }

    #[test]
    fn errors_name_the_url_and_show_an_example() {
        for (url, fragment) in [
            ("https://bucket/key", "scheme `https://`"),
            ("https://bucket/key", "`gs://`"),
            ("bucket/key", "does not start with `s3://`"),
            ("bucket/key", "`az://`"),
            ("az:///key", "container name is missing"),
            ("az://my_container/key", "lowercase letters, digits and `-`"),
            ("az://a--b/key", "two hyphens"),
            ("gs://Bucket/key", "lowercase"),
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
