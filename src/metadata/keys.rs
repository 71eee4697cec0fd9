//! The metadata keys orascale knows, the ones KEDA adds, and hints for keys users bring from
//! elsewhere.

pub const QUERY: &str = "query";
pub const TARGET_QUERY_VALUE: &str = "targetQueryValue";
pub const ACTIVATION_TARGET_QUERY_VALUE: &str = "activationTargetQueryValue";
pub const CONNECTION: &str = "connection";
pub const POLL_INTERVAL: &str = "pollInterval";
pub const QUERY_TIMEOUT: &str = "queryTimeout";
pub const METRIC_NAME: &str = "metricName";
pub const IGNORE_NULL_VALUES: &str = "ignoreNullValues";
pub const NOTIFY_CHANNEL: &str = "notifyChannel";
pub const MIN_WAKE_INTERVAL: &str = "minWakeInterval";
pub const TARGET_QUERY: &str = "targetQuery";
pub const TARGET_POLL_INTERVAL: &str = "targetPollInterval";

/// Our keys, for the "did you mean" hint.
pub const KEYS: &[&str] = &[
    QUERY,
    TARGET_QUERY_VALUE,
    ACTIVATION_TARGET_QUERY_VALUE,
    CONNECTION,
    POLL_INTERVAL,
    QUERY_TIMEOUT,
    METRIC_NAME,
    IGNORE_NULL_VALUES,
    NOTIFY_CHANNEL,
    MIN_WAKE_INTERVAL,
    TARGET_QUERY,
    TARGET_POLL_INTERVAL,
];

/// KEDA's own keys: they arrive in scalerMetadata (KEDA.md) and are accepted and ignored.
pub const KEDA_KEYS: &[&str] = &[
    "scalerAddress",
    "enableTLS",
    "unsafeSsl",
    "caCert",
    "tlsClientCert",
    "tlsClientKey",
];

/// Keys users bring from elsewhere, with what to write instead ("did you mean …") or, for
/// keys that belong elsewhere or no longer exist, where they go.
const HINTS: &[(&str, Hint)] = &[
    (
        "pollingInterval",
        Hint::Key("pollInterval; pollingInterval is a ScaledObject field"),
    ),
    (
        "cooldownPeriod",
        Hint::Note(
            "cooldownPeriod is a ScaledObject field (spec.cooldownPeriod), not trigger metadata",
        ),
    ),
    (
        "metricType",
        Hint::Note(
            "metricType is a field of the trigger itself, beside `type:` and `metadata:`; move it out of metadata",
        ),
    ),
    (
        "tlsCertFile",
        Hint::Note(
            "tlsCertFile was removed in KEDA 2.17; give KEDA caCert (the CA of orascale's certificate) and, for mTLS, tlsClientCert and tlsClientKey in a TriggerAuthentication",
        ),
    ),
    ("timeout", Hint::Key("queryTimeout")),
    ("listenChannel", Hint::Key("notifyChannel")),
    ("channel", Hint::Key("notifyChannel")),
    (
        "notifyQuery",
        Hint::Key(
            "notifyChannel (PostgreSQL LISTEN/NOTIFY); Oracle wake-ups are not available yet, see docs/oracle.md",
        ),
    ),
    (
        "notifyQueue",
        Hint::Key(
            "notifyChannel (PostgreSQL LISTEN/NOTIFY); Oracle wake-ups are not available yet, see docs/oracle.md",
        ),
    ),
    (
        "activationTargetQuery",
        Hint::Note(
            "activationTargetQuery is not supported: activation is orascale's own comparison, never part of the spec KEDA caches, so it stays the static activationTargetQueryValue (docs/configuration.md, \"Targets from the database\")",
        ),
    ),
    ("targetInterval", Hint::Key("targetPollInterval")),
    ("targetQueryInterval", Hint::Key("targetPollInterval")),
    ("sql", Hint::Key("query")),
    ("threshold", Hint::Key("targetQueryValue")),
    ("targetValue", Hint::Key("targetQueryValue")),
    (
        "activationThreshold",
        Hint::Key("activationTargetQueryValue"),
    ),
    ("activationValue", Hint::Key("activationTargetQueryValue")),
    (
        "connectionString",
        Hint::Key("connection, the name of a connection configured on the orascale server"),
    ),
    (
        "connectionStringFromEnv",
        Hint::Key("connection, the name of a connection configured on the orascale server"),
    ),
    (
        "host",
        Hint::Key("connection, the name of a connection configured on the orascale server"),
    ),
];

/// A hint: another key to write, or a note for a key that has no replacement here.
#[derive(Debug, Clone, Copy)]
enum Hint {
    Key(&'static str),
    Note(&'static str),
}

pub const CONNECTION_FROM_ENV: &str = "connectionFromEnv";
pub const USER_FROM_ENV: &str = "userFromEnv";
pub const PASSWORD_FROM_ENV: &str = "passwordFromEnv";

/// Per-ScaledObject credentials (KEDA resolves `…FromEnv` keys and sends the value under the
/// same key): accepted only with `--allow-metadata-credentials`.
pub(super) const CREDENTIAL_KEYS: &[&str] =
    &[CONNECTION_FROM_ENV, USER_FROM_ENV, PASSWORD_FROM_ENV];

/// The hint for an unknown key, as a whole phrase: "did you mean …" or a note.
pub(super) fn hint_for(key: &str) -> Option<String> {
    if let Some((_, h)) = HINTS.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
        return Some(match h {
            Hint::Key(k) => format!("did you mean {k}"),
            Hint::Note(n) => (*n).to_string(),
        });
    }
    KEYS.iter()
        .map(|k| {
            (
                k,
                distance(&k.to_ascii_lowercase(), &key.to_ascii_lowercase()),
            )
        })
        .filter(|(k, d)| *d <= 3.max(k.len() / 5))
        .min_by_key(|(_, d)| *d)
        .map(|(k, _)| format!("did you mean {k}"))
}

/// Levenshtein distance, for short keys.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().take(200).collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_read_as_sentences() {
        let cases = [
            ("pollingInterval", "did you mean pollInterval;"),
            ("metricType", "a field of the trigger itself"),
            ("MetricType", "move it out of metadata"),
            ("cooldownPeriod", "ScaledObject field"),
            ("tlsCertFile", "removed in KEDA 2.17"),
            ("tlsCertFile", "caCert"),
            (
                "tlsCertFile",
                "tlsClientCert and tlsClientKey in a TriggerAuthentication",
            ),
            ("querytimeout", "did you mean queryTimeout"),
            ("targetquery", "did you mean targetQuery"),
            ("targetPollIntervall", "did you mean targetPollInterval"),
            ("activationTargetQuery", "is not supported"),
        ];
        for (key, want) in cases {
            let h = hint_for(key).unwrap_or_else(|| panic!("{key}: no hint"));
            assert!(h.contains(want), "{key}: {h:?} lacks {want:?}");
            assert!(!h.contains("did you mean nothing"), "{key}: {h:?}");
        }
        assert_eq!(hint_for("zzzzzzzzzzzzzzzzzzzz"), None);
    }
}
