//! Connections made from a ScaledObject's own credentials (`connectionFromEnv`, `userFromEnv`,
//! `passwordFromEnv`).
//!
//! The rules keep the server's credentials the server's: with a server-side `connection`, a
//! trigger gives both a user and a password or neither (KEDA silently drops a `*FromEnv` key
//! whose variable is missing, so "one of them" is usually a missing Secret, and would otherwise
//! log in with the server's password, or try passwords against the server's own account). The
//! user of any server-side connection is refused outright: a trigger "using" it cannot be told
//! apart from one guessing its password. With `connectionFromEnv` the URL and the keys together
//! must name a user and a password, and a network host, so nothing falls back to the scaler's
//! identity (Oracle wallet, OS user, a local socket).

use std::collections::BTreeMap;

use super::keys::{PASSWORD_FROM_ENV, USER_FROM_ENV};
use super::{MetadataError, invalid};
use crate::config::{ConnectionConfig, ConnectionUrl};

/// `userFromEnv` and `passwordFromEnv`, both present, or the error naming the missing one.
pub(super) fn both<'a>(
    user: Option<&'a str>,
    password: Option<&'a str>,
) -> Result<(&'a str, &'a str), MetadataError> {
    match (user, password) {
        (Some(u), Some(p)) => Ok((u, p)),
        (Some(_), None) => Err(MetadataError::Missing {
            key: PASSWORD_FROM_ENV,
            what: "userFromEnv needs its own password: the server's password is never used with another user (KEDA drops a *FromEnv key whose variable is missing or empty: is the workload's Secret mounted?)",
        }),
        (None, _) => Err(MetadataError::Missing {
            key: USER_FROM_ENV,
            what: "passwordFromEnv needs its own user: a metadata password is never tried against the server's own user (KEDA drops a *FromEnv key whose variable is missing or empty: is the workload's Secret mounted?)",
        }),
    }
}

/// Refuses, as a metadata user, the user of any server-side connection to a database of the
/// same kind: guessing its password through a trigger would be an online guessing channel
/// against an account the server depends on (and on Oracle a way to lock it). Oracle folds
/// unquoted names to upper case, so it compares case-insensitively there; quoted Oracle names
/// and proxy syntax (`"SCOTT"`, `APP[SCOTT]`) are refused outright by [`checked`].
fn not_a_servers_user(
    url: &ConnectionUrl,
    user: &str,
    servers: &BTreeMap<String, ConnectionConfig>,
) -> Result<(), MetadataError> {
    let owner = servers.values().find(|c| {
        std::mem::discriminant(&c.url) == std::mem::discriminant(url)
            && c.url
                .credentials()
                .ok()
                .and_then(|own| own.user)
                .is_some_and(|own| match url {
                    ConnectionUrl::Oracle { .. } => own.eq_ignore_ascii_case(user),
                    _ => own == user,
                })
    });
    match owner {
        Some(c) => Err(invalid(
            USER_FROM_ENV,
            user,
            format!(
                "is the user of this server's connection {:?}: a trigger may bring other credentials, never the server's (use \"connection\" without userFromEnv/passwordFromEnv to use it as configured)",
                c.name
            ),
        )),
        None => Ok(()),
    }
}

/// The rules every connection made from metadata obeys, on the URL it will use (as the
/// driver's own parser reads it): it parses (`key` is named when not, the URL never quoted);
/// it names a user and a password, so nothing falls back to the scaler's own identity; the
/// user is a plain name (no control characters; on Oracle no quoted identifier or proxy
/// syntax) and no server-side connection's user; and, for a URL from metadata
/// (`from_metadata`), it reaches the database over the network, never through a Unix socket on
/// the scaler's host.
pub(super) fn checked(
    url: &ConnectionUrl,
    key: &'static str,
    from_metadata: bool,
    servers: &BTreeMap<String, ConnectionConfig>,
) -> Result<(), MetadataError> {
    let creds = url.credentials().map_err(|reason| MetadataError::Invalid {
        key,
        value: "(not shown: it may hold a password)".into(),
        reason,
    })?;
    let Some(user) = creds.user else {
        return Err(MetadataError::Missing {
            key: USER_FROM_ENV,
            what: "a connection from metadata needs a user (in the connectionFromEnv URL or userFromEnv): it never falls back to the scaler's own identity",
        });
    };
    if !creds.has_password {
        return Err(MetadataError::Missing {
            key: PASSWORD_FROM_ENV,
            what: "a connection from metadata needs a password (in the connectionFromEnv URL or passwordFromEnv)",
        });
    }
    let oracle = matches!(url, ConnectionUrl::Oracle { .. });
    if user.chars().any(char::is_control) || (oracle && user.contains(['"', '[', ']'])) {
        return Err(invalid(
            USER_FROM_ENV,
            &user,
            "must be a plain user name (no control characters; on Oracle no quoted identifier or proxy syntax)",
        ));
    }
    if creds.unix_socket && from_metadata {
        return Err(MetadataError::Invalid {
            key,
            value: "(not shown: it may hold a password)".into(),
            reason: "connects through a Unix socket on the scaler's host; a connection from metadata must name a network host".into(),
        });
    }
    not_a_servers_user(url, &user, servers)
}

/// Sessions per pool made from metadata credentials: these pools are per ScaledObject
/// credentials, so they are kept small.
pub(super) const METADATA_POOL_SIZE: usize = 2;

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
    format!("{}{h:016x}", crate::trigger::DYNAMIC_PREFIX)
}
