//! Connections made from a ScaledObject's own credentials (`connectionFromEnv`, `userFromEnv`,
//! `passwordFromEnv`).

use crate::config::ConnectionUrl;

/// Sessions per pool made from metadata credentials: these pools are per ScaledObject
/// credentials, so they are kept small.
pub(super) const METADATA_POOL_SIZE: usize = 2;

/// Whether a connection name is one [`dynamic_name`] makes (configured names may not be).
pub fn is_dynamic_name(name: &str) -> bool {
    name.starts_with(DYNAMIC_PREFIX)
}

/// The prefix of connections made from metadata credentials; reserved.
pub const DYNAMIC_PREFIX: &str = "meta-";

/// A name for a connection made from metadata credentials: a hash keyed with a per-process
/// secret, so equal credentials share one pool, different ones never do, and the name reveals
/// nothing about the password.
pub(super) fn dynamic_name(url: &ConnectionUrl) -> String {
    use std::hash::BuildHasher;
    static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let h = KEY
        .get_or_init(Default::default)
        .hash_one(url.identity_for_hashing());
    format!("{DYNAMIC_PREFIX}{h:016x}")
}
