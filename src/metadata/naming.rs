//! Metric names: given (`metricName`, checked) or derived from the connection and the query.

use super::{METRIC_NAME, MetadataError, invalid};

pub(super) fn parse_metric_name(v: &str) -> Result<String, MetadataError> {
    let valid_chars = v
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if v.len() > 100 {
        return Err(invalid(METRIC_NAME, v, "is longer than 100 characters"));
    }
    if !valid_chars {
        let lowered = sanitize(v);
        return Err(invalid(
            METRIC_NAME,
            v,
            format!(
                "must be lowercase [a-z0-9-] (the HPA lowercases metric names){}",
                if lowered.is_empty() {
                    String::new()
                } else {
                    format!(": did you mean {lowered:?}?")
                }
            ),
        ));
    }
    if v.starts_with('-') || v.ends_with('-') {
        return Err(invalid(METRIC_NAME, v, "must not start or end with '-'"));
    }
    Ok(v.to_string())
}

/// Lowercase `[a-z0-9-]`, runs of other characters as one `-`, no leading/trailing `-`.
fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// `orascale-<connection>-<hash of the query>`: deterministic across replicas and restarts,
/// so every replica behind a Service answers for the same name.
pub fn default_metric_name(connection: &str, query: &str) -> String {
    let conn = sanitize(connection);
    let conn: String = conn.chars().take(40).collect();
    let conn = conn.trim_end_matches('-');
    format!(
        "orascale-{conn}-{:012x}",
        crate::trigger::stable_hash(query.as_bytes()) >> 16
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_metric_name_is_stable_and_valid() {
        let a = default_metric_name("Orders_DB", "select 1");
        assert_eq!(a, default_metric_name("Orders_DB", "select 1"));
        assert_ne!(a, default_metric_name("Orders_DB", "select 2"));
        assert!(a.starts_with("orascale-orders-db-"), "{a}");
        assert!(parse_metric_name(&a).is_ok());
        // Pinned: replicas and restarts must agree on the name KEDA asks for.
        assert_eq!(
            default_metric_name("db", "select 1"),
            "orascale-db-02fb785a1a5a"
        );
    }
}
