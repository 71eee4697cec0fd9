//! Connections made from a ScaledObject's own credentials (`connectionFromEnv`, `userFromEnv`,
//! `passwordFromEnv`).
//!
//! The rules keep the server's credentials the server's: with a server-side `connection`, a
//! trigger gives both a user and a password or neither (KEDA silently drops a `*FromEnv` key
//! whose variable is missing, so "one of them" is usually a missing Secret, and would otherwise
//! log in with the server's password, or try passwords against the server's own account). The
//! server's own user is refused outright: a trigger "using" it cannot be told apart from one
//! guessing its password. With `connectionFromEnv` the URL and the keys together must name a
//! user and a password, so nothing falls back to the scaler's identity (Oracle wallet, OS user).

use super::keys::{PASSWORD_FROM_ENV, USER_FROM_ENV};
use super::{MetadataError, invalid};
use crate::config::ConnectionUrl;

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

/// Refuses the connection's own user as a metadata user (Oracle folds unquoted names to upper
/// case, so it compares case-insensitively there).
pub(super) fn not_the_servers_user(url: &ConnectionUrl, user: &str) -> Result<(), MetadataError> {
    let Ok(own) = url.credentials() else {
        return Ok(()); // the server's URL is validated at startup; nothing to compare
    };
    let same = own.user.as_deref().is_some_and(|own| match url {
        ConnectionUrl::Oracle { .. } => own.eq_ignore_ascii_case(user),
        _ => own == user,
    });
    if same {
        return Err(invalid(
            USER_FROM_ENV,
            user,
            "is the connection's own user: a trigger may bring other credentials, never the server's (drop userFromEnv/passwordFromEnv to use the connection as configured)",
        ));
    }
    Ok(())
}

/// The URL a metadata connection will use parses as the driver reads it and names a user and a
/// password; `key` is named when it does not parse (the URL itself is never quoted).
pub(super) fn complete(url: &ConnectionUrl, key: &'static str) -> Result<(), MetadataError> {
    let creds = url.credentials().map_err(|reason| MetadataError::Invalid {
        key,
        value: "(not shown: it may hold a password)".into(),
        reason,
    })?;
    if creds.user.is_none() {
        return Err(MetadataError::Missing {
            key: USER_FROM_ENV,
            what: "a connection from metadata needs a user (in the connectionFromEnv URL or userFromEnv): it never falls back to the scaler's own identity",
        });
    }
    if !creds.has_password {
        return Err(MetadataError::Missing {
            key: PASSWORD_FROM_ENV,
            what: "a connection from metadata needs a password (in the connectionFromEnv URL or passwordFromEnv)",
        });
    }
    Ok(())
}

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
