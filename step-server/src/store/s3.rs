//! `--storage` (env `STEP_STORAGE`): where the server keeps everything, and
//! the S3 client for `s3://BUCKET[/PREFIX]`.
//!
//! The endpoint, credentials and region come from the standard AWS variables,
//! as every S3 tool reads them: `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT`,
//! `AWS_ENDPOINT_URL_S3`), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, `AWS_REGION` (or `AWS_DEFAULT_REGION`) and
//! `AWS_ALLOW_HTTP=true` for an endpoint without TLS. Requests are path-style
//! (`ENDPOINT/BUCKET/KEY`), which every S3-compatible server accepts, unless
//! `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::prefix::PrefixStore;

/// What `--storage` names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StorageChoice {
    /// Local disk under `--data-dir` (the default, also spelled `disk`).
    #[default]
    Disk,
    /// Every object under `prefix` (the bucket's root when empty) in `bucket`.
    S3 { bucket: String, prefix: Path },
}

/// A `--storage` value or an S3 configuration that cannot work; the message
/// names what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageConfigError {
    #[error("--storage / STEP_STORAGE {value:?}: {reason}")]
    Choice { value: String, reason: String },
    #[error("S3 client for bucket {bucket:?}: {reason}")]
    S3 { bucket: String, reason: String },
}

impl StorageChoice {
    /// Parses `disk` or `s3://BUCKET[/PREFIX]` (a trailing `/` is allowed).
    pub fn parse(value: &str) -> Result<StorageChoice, StorageConfigError> {
        let refuse = |reason: String| StorageConfigError::Choice {
            value: value.to_owned(),
            reason,
        };
        if value == "disk" {
            return Ok(StorageChoice::Disk);
        }
        let Some(rest) = value.strip_prefix("s3://") else {
            return Err(refuse(
                "expected `disk` (local disk under --data-dir) or `s3://BUCKET[/PREFIX]`".into(),
            ));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        check_bucket_name(bucket).map_err(refuse)?;
        if prefix.contains(['?', '#']) {
            return Err(refuse(
                "the prefix may not hold `?` or `#` (this is a bucket and a key prefix, not a URL with a query)".into(),
            ));
        }
        if prefix.starts_with('/') {
            return Err(refuse(
                "bad prefix: it begins with `/` (an empty path segment)".into(),
            ));
        }
        // `Path::parse` drops one trailing `/` and refuses empty, `.` and
        // `..` segments, which S3 would keep as literal (and confusing) keys.
        let prefix = Path::parse(prefix).map_err(|e| refuse(format!("bad prefix: {e}")))?;
        Ok(StorageChoice::S3 {
            bucket: bucket.to_owned(),
            prefix,
        })
    }
}

impl FromStr for StorageChoice {
    type Err = StorageConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StorageChoice::parse(s)
    }
}

impl fmt::Display for StorageChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageChoice::Disk => f.write_str("disk"),
            StorageChoice::S3 { bucket, prefix } if prefix.is_root() => write!(f, "s3://{bucket}"),
            StorageChoice::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// The S3 bucket naming rules (AWS's, which the others follow): refused here
/// rather than by the first request, whose error would not say why.
fn check_bucket_name(bucket: &str) -> Result<(), String> {
    if bucket.is_empty() {
        return Err("no bucket name after `s3://`".into());
    }
    if !(3..=63).contains(&bucket.len()) {
        return Err(format!(
            "bucket name {bucket:?} must be 3 to 63 characters long"
        ));
    }
    if let Some(c) = bucket
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '.' || *c == '-'))
    {
        return Err(format!(
            "bucket name {bucket:?} holds {c:?}: only lowercase letters, digits, `.` and `-` are allowed"
        ));
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(bucket.chars().next()) || !edge_ok(bucket.chars().last()) {
        return Err(format!(
            "bucket name {bucket:?} must begin and end with a letter or a digit"
        ));
    }
    Ok(())
}

/// An S3 client builder for `bucket` configured from `vars` (the process
/// environment in [`s3_from_env`]; given explicitly so tests need not change
/// the environment).
///
/// `AmazonS3Builder::from_env` reads every `AWS_*` variable it knows, and it
/// knows `AWS_ENDPOINT_URL` and `AWS_ENDPOINT` as the same setting, so when
/// both are set the last one in environment order would win. Here
/// `AWS_ENDPOINT_URL`, the name AWS's own tools use, always wins (and
/// `AWS_ENDPOINT_URL_S3`, more specific, wins over both when building).
pub fn s3_builder_from_vars(
    bucket: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<AmazonS3Builder, StorageConfigError> {
    let refuse = |reason: String| StorageConfigError::S3 {
        bucket: bucket.to_owned(),
        reason,
    };
    let mut builder = AmazonS3Builder::new();
    let mut endpoint_url = None;
    for (name, value) in vars {
        if !name.starts_with("AWS_") {
            continue;
        }
        if name == "AWS_ENDPOINT_URL" {
            endpoint_url = Some(value.clone());
        }
        // Unknown AWS_* variables (profiles, the CLI's own settings) are
        // none of this client's business.
        if let Ok(key) = name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
            builder = builder.with_config(key, value);
        }
    }
    if let Some(url) = endpoint_url {
        builder = builder.with_endpoint(url);
    }
    builder = builder.with_bucket_name(bucket);

    let endpoint = builder
        .get_config_value(&AmazonS3ConfigKey::S3Endpoint)
        .or_else(|| builder.get_config_value(&AmazonS3ConfigKey::Endpoint));
    let allow_http = builder
        .get_config_value(&AmazonS3ConfigKey::Client(
            object_store::ClientConfigKey::AllowHttp,
        ))
        .is_some_and(|v| v == "true");
    if let Some(endpoint) = &endpoint {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(refuse(format!(
                "AWS_ENDPOINT_URL {endpoint:?} must start with http:// or https://"
            )));
        }
        // Otherwise every request would fail later with a less helpful error.
        if endpoint.starts_with("http://") && !allow_http {
            return Err(refuse(format!(
                "the endpoint {endpoint:?} is plain HTTP; set AWS_ALLOW_HTTP=true to allow it"
            )));
        }
    }
    let has_key = builder
        .get_config_value(&AmazonS3ConfigKey::AccessKeyId)
        .is_some();
    let has_secret = builder
        .get_config_value(&AmazonS3ConfigKey::SecretAccessKey)
        .is_some();
    if has_key != has_secret {
        return Err(refuse(
            "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither".into(),
        ));
    }
    Ok(builder)
}

/// The S3 client for `bucket`, configured from the environment. Building makes
/// no request: a wrong endpoint or key shows on first use.
pub fn s3_from_env(bucket: &str) -> Result<AmazonS3, StorageConfigError> {
    s3_builder_from_vars(bucket, std::env::vars())?
        .build()
        .map_err(|e| StorageConfigError::S3 {
            bucket: bucket.to_owned(),
            reason: e.to_string(),
        })
}

/// The store for `s3://bucket/prefix`: every path the caller uses is under
/// `prefix` in the bucket.
pub fn object_store_from_env(
    bucket: &str,
    prefix: &Path,
) -> Result<Arc<dyn ObjectStore>, StorageConfigError> {
    let s3 = s3_from_env(bucket)?;
    Ok(if prefix.is_root() {
        Arc::new(s3)
    } else {
        Arc::new(PrefixStore::new(s3, prefix.clone()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(bucket: &str, prefix: &str) -> StorageChoice {
        StorageChoice::S3 {
            bucket: bucket.into(),
            prefix: Path::from(prefix),
        }
    }

    #[test]
    fn valid_choices_parse() {
        assert_eq!(StorageChoice::parse("disk"), Ok(StorageChoice::Disk));
        assert_eq!(StorageChoice::parse("s3://step"), Ok(s3("step", "")));
        assert_eq!(StorageChoice::parse("s3://step/"), Ok(s3("step", "")));
        assert_eq!(
            StorageChoice::parse("s3://my.bucket-1/a"),
            Ok(s3("my.bucket-1", "a"))
        );
        assert_eq!(
            StorageChoice::parse("s3://step/team/prod/"),
            Ok(s3("step", "team/prod"))
        );
        for text in ["disk", "s3://step", "s3://step/team/prod"] {
            let choice = StorageChoice::parse(text).expect("parses");
            assert_eq!(choice.to_string(), text, "Display gives back the flag");
        }
        assert_eq!(StorageChoice::default(), StorageChoice::Disk);
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        let cases = [
            ("", "expected `disk`"),
            ("Disk", "expected `disk`"),
            ("/var/step", "expected `disk`"),
            ("file:///var/step", "expected `disk`"),
            ("S3://step", "expected `disk`"),
            ("s3:/step", "expected `disk`"),
            ("https://s3.example.com/step", "expected `disk`"),
            ("s3://", "no bucket name"),
            ("s3:///prefix", "no bucket name"),
            ("s3://ab", "3 to 63"),
            (&format!("s3://{}", "a".repeat(64)), "3 to 63"),
            ("s3://Step", "holds 'S'"),
            ("s3://my_bucket", "holds '_'"),
            ("s3://step:9000", "holds ':'"),
            ("s3://user@step", "holds '@'"),
            ("s3://-step", "begin and end"),
            ("s3://step.", "begin and end"),
            ("s3://step//a", "bad prefix"),
            ("s3://step/a//b", "bad prefix"),
            ("s3://step/a//", "bad prefix"),
            ("s3://step/a/../b", "bad prefix"),
            ("s3://step/./b", "bad prefix"),
            ("s3://step/a?x=1", "`?` or `#`"),
            ("s3://step/a#x", "`?` or `#`"),
        ];
        for (value, reason) in cases {
            let err = StorageChoice::parse(value).expect_err(value).to_string();
            assert!(err.contains("--storage"), "{value:?}: {err}");
            assert!(err.contains(reason), "{value:?}: {err} (wanted {reason:?})");
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn endpoint(b: &AmazonS3Builder) -> Option<String> {
        b.get_config_value(&AmazonS3ConfigKey::Endpoint)
    }

    #[test]
    fn the_standard_aws_variables_configure_the_client() {
        let b = s3_builder_from_vars(
            "step",
            vars(&[
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:3900"),
                ("AWS_ACCESS_KEY_ID", "GK0123"),
                ("AWS_SECRET_ACCESS_KEY", "s3cr3t-s3cr3t-s3cr3t"),
                ("AWS_REGION", "garage"),
                ("AWS_ALLOW_HTTP", "true"),
                ("AWS_PROFILE", "ignored: not a client setting"),
                ("HOME", "/root"),
            ]),
        )
        .expect("configured");
        let get = |k| b.get_config_value(&k);
        assert_eq!(endpoint(&b).as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(
            get(AmazonS3ConfigKey::AccessKeyId).as_deref(),
            Some("GK0123")
        );
        assert_eq!(get(AmazonS3ConfigKey::Region).as_deref(), Some("garage"));
        assert_eq!(get(AmazonS3ConfigKey::Bucket).as_deref(), Some("step"));
        assert_eq!(
            get(AmazonS3ConfigKey::VirtualHostedStyleRequest).as_deref(),
            Some("false"),
            "path-style requests by default"
        );
        b.build().expect("builds without a request");
    }

    #[test]
    fn aws_endpoint_url_wins_over_aws_endpoint_in_either_order() {
        let url = ("AWS_ENDPOINT_URL", "http://127.0.0.1:1");
        let old = ("AWS_ENDPOINT", "http://127.0.0.1:2");
        let http = ("AWS_ALLOW_HTTP", "true");
        for pairs in [[url, old, http], [old, url, http]] {
            let b = s3_builder_from_vars("step", vars(&pairs)).expect("configured");
            assert_eq!(endpoint(&b).as_deref(), Some("http://127.0.0.1:1"));
        }
        let b = s3_builder_from_vars("step", vars(&[old, http])).expect("configured");
        assert_eq!(
            endpoint(&b).as_deref(),
            Some("http://127.0.0.1:2"),
            "AWS_ENDPOINT alone works"
        );
        let b = s3_builder_from_vars("step", vars(&[("AWS_DEFAULT_REGION", "eu-west-3")]))
            .expect("configured");
        assert_eq!(
            b.get_config_value(&AmazonS3ConfigKey::Region).as_deref(),
            Some("eu-west-3")
        );
    }

    #[test]
    fn configurations_that_cannot_work_are_refused_up_front() {
        let cases: [(&[(&str, &str)], &str); 4] = [
            (
                &[("AWS_ENDPOINT_URL", "http://127.0.0.1:3900")],
                "AWS_ALLOW_HTTP=true",
            ),
            (
                &[
                    ("AWS_ENDPOINT_URL", "http://127.0.0.1:3900"),
                    ("AWS_ALLOW_HTTP", "false"),
                ],
                "AWS_ALLOW_HTTP=true",
            ),
            (
                &[("AWS_ENDPOINT_URL", "127.0.0.1:3900")],
                "http:// or https://",
            ),
            (&[("AWS_ACCESS_KEY_ID", "GK0123")], "both AWS_ACCESS_KEY_ID"),
        ];
        for (pairs, reason) in cases {
            let err = s3_builder_from_vars("step", vars(pairs))
                .expect_err(reason)
                .to_string();
            assert!(err.contains(reason) && err.contains("\"step\""), "{err}");
        }
        s3_builder_from_vars(
            "step",
            vars(&[("AWS_ENDPOINT_URL", "https://s3.example.com")]),
        )
        .expect("https needs nothing more");
    }
}
