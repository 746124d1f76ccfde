//! One `object_store` client per provider (S3, Google Cloud Storage, Azure Blob Storage), each
//! configured from its cloud's conventional environment, then the explicit overrides of
//! [`RemoteSettings`], then the timeouts and retries every provider shares.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};

use super::error::RemoteError;
use super::settings::{AzureOverrides, GcsOverrides, RemoteSettings, S3Overrides};
use super::url::{Provider, RemoteUrl};

/// A built store and the key of its outage breaker (one per endpoint and bucket).
pub(super) struct Built {
    pub store: Arc<dyn ObjectStore>,
    pub breaker_key: String,
}

/// Builds the store for `url`'s provider and bucket. Makes no request.
pub(super) fn build(url: &RemoteUrl, settings: &RemoteSettings) -> Result<Built, RemoteError> {
    let bucket = url.bucket();
    let provider = url.provider();
    let config_err = |e: object_store::Error| RemoteError::Config {
        target: format!("{}://{bucket}", provider.scheme()),
        detail: e.to_string(),
        hint: match provider {
            Provider::S3 => "check AWS_ENDPOINT_URL, AWS_REGION and the AWS credential variables",
            Provider::Gcs => {
                "check GOOGLE_APPLICATION_CREDENTIALS (or GOOGLE_SERVICE_ACCOUNT / \
                 GOOGLE_SERVICE_ACCOUNT_KEY) and GOOGLE_BASE_URL"
            }
            Provider::Azure => {
                "set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME with a \
                 credential (AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_TOKEN, a service \
                 principal or managed identity), or AZURE_STORAGE_USE_EMULATOR=true"
            }
        },
    };
    let client = |key: ClientConfigKey, d: Duration| (key, format!("{}ms", d.as_millis().max(1)));
    // Set through config keys rather than `with_client_options`, which would discard the
    // client settings `from_env` read (proxies, certificates, *_ALLOW_HTTP).
    let timeouts = [
        client(ClientConfigKey::ConnectTimeout, settings.connect_timeout),
        client(ClientConfigKey::Timeout, settings.request_timeout),
    ];
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: settings.retry_backoff,
            max_backoff: Duration::from_secs(5).max(settings.retry_backoff),
            base: 2.0,
        },
        max_retries: settings.retries,
        retry_timeout: settings.overall_timeout,
    };
    let is_http = |endpoint: &Option<String>| endpoint.as_deref().is_some_and(|e| e.starts_with("http://"));

    match provider {
        Provider::S3 => {
            let mut builder = s3(bucket, &settings.s3);
            let endpoint = builder
                .get_config_value(&AmazonS3ConfigKey::S3Endpoint)
                .or_else(|| builder.get_config_value(&AmazonS3ConfigKey::Endpoint));
            match settings.s3.allow_http {
                Some(allow) => builder = builder.with_allow_http(allow),
                None if is_http(&endpoint) => builder = builder.with_allow_http(true),
                None => {}
            }
            for (key, value) in timeouts {
                builder = builder.with_config(AmazonS3ConfigKey::Client(key), value);
            }
            let region = builder
                .get_config_value(&AmazonS3ConfigKey::Region)
                .unwrap_or_default();
            let store = builder.with_retry(retry).build().map_err(config_err)?;
            Ok(Built {
                store: Arc::new(store),
                breaker_key: match &endpoint {
                    Some(endpoint) => format!("{endpoint}|{bucket}"),
                    None => format!("aws:{region}|{bucket}"),
                },
            })
        }
        Provider::Gcs => {
            let mut builder = gcs(bucket, &settings.gcs);
            let base_url = builder.get_config_value(&GoogleConfigKey::BaseUrl);
            match settings.gcs.allow_http {
                Some(allow) => {
                    builder = builder.with_config(
                        GoogleConfigKey::Client(ClientConfigKey::AllowHttp),
                        allow.to_string(),
                    );
                }
                None if is_http(&base_url) => {
                    builder =
                        builder.with_config(GoogleConfigKey::Client(ClientConfigKey::AllowHttp), "true");
                }
                None => {}
            }
            for (key, value) in timeouts {
                builder = builder.with_config(GoogleConfigKey::Client(key), value);
            }
            let store = builder.with_retry(retry).build().map_err(config_err)?;
            Ok(Built {
                store: Arc::new(store),
                breaker_key: format!("gs:{}|{bucket}", base_url.as_deref().unwrap_or("google")),
            })
        }
        Provider::Azure => {
            let mut builder = azure(bucket, &settings.azure).map_err(config_err)?;
            let endpoint = builder.get_config_value(&AzureConfigKey::Endpoint);
            match settings.azure.allow_http {
                Some(allow) => builder = builder.with_allow_http(allow),
                None if is_http(&endpoint) => builder = builder.with_allow_http(true),
                None => {}
            }
            for (key, value) in timeouts {
                builder = builder.with_config(AzureConfigKey::Client(key), value);
            }
            let account = builder
                .get_config_value(&AzureConfigKey::AccountName)
                .unwrap_or_default();
            let store = builder.with_retry(retry).build().map_err(config_err)?;
            Ok(Built {
                store: Arc::new(store),
                breaker_key: format!(
                    "az:{}|{bucket}",
                    endpoint.unwrap_or_else(|| format!("{account}.blob"))
                ),
            })
        }
    }
}

/// The builder for `bucket` from the AWS environment, with the explicit overrides applied.
fn s3(bucket: &str, s3: &S3Overrides) -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(endpoint) = &s3.endpoint {
        // AWS_ENDPOINT_URL_S3 would otherwise take precedence over the explicit endpoint.
        builder = builder
            .with_endpoint(endpoint)
            .with_config(AmazonS3ConfigKey::S3Endpoint, endpoint.as_str());
    }
    if let Some(region) = &s3.region {
        builder = builder.with_region(region);
    }
    if let Some(key) = &s3.access_key_id {
        builder = builder.with_access_key_id(key);
    }
    if let Some(secret) = &s3.secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    if let Some(token) = &s3.session_token {
        builder = builder.with_token(token);
    }
    builder
}

/// The builder for `bucket` from the Google environment (`GOOGLE_*`, the application default
/// credentials), with the explicit overrides applied.
fn gcs(bucket: &str, gcs: &GcsOverrides) -> GoogleCloudStorageBuilder {
    let mut builder = GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket);
    if let Some(base_url) = &gcs.base_url {
        builder = builder.with_base_url(base_url);
    }
    if let Some(key) = &gcs.service_account_key {
        builder = builder.with_service_account_key(key);
    }
    builder
}

/// The builder for `container` from the Azure environment, then the connection string
/// (explicit, else `AZURE_STORAGE_CONNECTION_STRING`), then the explicit overrides.
fn azure(container: &str, azure: &AzureOverrides) -> Result<MicrosoftAzureBuilder, object_store::Error> {
    let mut builder = MicrosoftAzureBuilder::from_env().with_container_name(container);
    let from_env = std::env::var("AZURE_STORAGE_CONNECTION_STRING").ok();
    if let Some(connection) = azure.connection_string.as_deref().or(from_env.as_deref()) {
        for (key, value) in connection_string(connection)? {
            builder = builder.with_config(key, value);
        }
    }
    let overrides = [
        (AzureConfigKey::AccountName, &azure.account),
        (AzureConfigKey::Endpoint, &azure.endpoint),
        (AzureConfigKey::AccessKey, &azure.access_key),
        (AzureConfigKey::SasKey, &azure.sas_token),
    ];
    for (key, value) in overrides {
        if let Some(value) = value {
            builder = builder.with_config(key, value);
        }
    }
    Ok(builder)
}

/// The settings in an Azure storage connection string
/// (`Key=Value;Key=Value`, as the portal, `az storage account show-connection-string` and
/// Azurite print them). object_store has no parser for them, so this maps the keys that name
/// the blob service and its credential: `AccountName`, `AccountKey`, `SharedAccessSignature`,
/// `BlobEndpoint` (else `DefaultEndpointsProtocol` + `EndpointSuffix`), and
/// `UseDevelopmentStorage=true` (Azurite's default address). Other keys (queue, table, file
/// endpoints) are ignored.
fn connection_string(text: &str) -> Result<Vec<(AzureConfigKey, String)>, object_store::Error> {
    let bad = |reason: String| object_store::Error::Generic {
        store: "MicrosoftAzure",
        source: format!("invalid AZURE_STORAGE_CONNECTION_STRING: {reason}").into(),
    };
    let mut fields = std::collections::HashMap::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        // Values (keys, signatures) may themselves contain `=`: split at the first one only.
        let Some((key, value)) = part.split_once('=') else {
            return Err(bad(format!(
                "`{}` is not a Key=Value pair",
                part.split('=').next().unwrap_or("")
            )));
        };
        fields.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let mut out = Vec::new();
    if fields
        .get("usedevelopmentstorage")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        out.push((AzureConfigKey::UseEmulator, "true".to_owned()));
    }
    let account = fields.get("accountname").cloned();
    if let Some(account) = &account {
        out.push((AzureConfigKey::AccountName, account.clone()));
    }
    if let Some(key) = fields.get("accountkey") {
        out.push((AzureConfigKey::AccessKey, key.clone()));
    }
    if let Some(sas) = fields.get("sharedaccesssignature") {
        out.push((AzureConfigKey::SasKey, sas.trim_start_matches('?').to_owned()));
    }
    match (fields.get("blobendpoint"), &account) {
        (Some(endpoint), _) => out.push((
            AzureConfigKey::Endpoint,
            endpoint.trim_end_matches('/').to_owned(),
        )),
        (None, Some(account))
            if fields.contains_key("endpointsuffix") || fields.contains_key("defaultendpointsprotocol") =>
        {
            let protocol = fields
                .get("defaultendpointsprotocol")
                .map_or("https", String::as_str);
            let suffix = fields
                .get("endpointsuffix")
                .map_or("core.windows.net", String::as_str);
            out.push((
                AzureConfigKey::Endpoint,
                format!("{protocol}://{account}.blob.{suffix}"),
            ));
        }
        _ => {}
    }
    if out.is_empty() {
        return Err(bad(
            "it names no account, key, signature or endpoint (expected e.g. \
             `AccountName=...;AccountKey=...;EndpointSuffix=core.windows.net`)"
                .to_owned(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(pairs: &[(AzureConfigKey, String)], key: AzureConfigKey) -> Option<&str> {
        pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn connection_strings_map_to_account_credential_and_endpoint() {
        let portal = connection_string(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5==;EndpointSuffix=core.windows.net",
        )
        .unwrap();
        assert_eq!(get(&portal, AzureConfigKey::AccountName), Some("acct"));
        assert_eq!(get(&portal, AzureConfigKey::AccessKey), Some("a2V5=="));
        assert_eq!(
            get(&portal, AzureConfigKey::Endpoint),
            Some("https://acct.blob.core.windows.net")
        );

        let azurite = connection_string(
            "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1/;SharedAccessSignature=?sv=1&sig=x%3D",
        )
        .unwrap();
        assert_eq!(
            get(&azurite, AzureConfigKey::Endpoint),
            Some("http://127.0.0.1:10000/devstoreaccount1")
        );
        assert_eq!(get(&azurite, AzureConfigKey::SasKey), Some("sv=1&sig=x%3D"));

        let dev = connection_string("UseDevelopmentStorage=true").unwrap();
        assert_eq!(get(&dev, AzureConfigKey::UseEmulator), Some("true"));
    }

    #[test]
    fn bad_connection_strings_are_named() {
        for text in ["garbage", "QueueEndpoint=http://x"] {
            let message = connection_string(text).unwrap_err().to_string();
            assert!(message.contains("AZURE_STORAGE_CONNECTION_STRING"), "{message}");
        }
    }
}
