//! Connection URLs: `sqlite:…`, `postgres://…`, `oracle://…`, parsed into a [`ConnectionUrl`]
//! whose `Debug` and `Display` never show a password.

use std::fmt;
use std::path::PathBuf;

/// A parsed connection URL. `Debug` and `Display` never show a password.
#[derive(Clone, PartialEq)]
pub enum ConnectionUrl {
    Sqlite(SqliteTarget),
    Postgres {
        url: String,
    },
    Oracle {
        user: String,
        password: Option<String>,
        /// EZConnect `//host:port/service`.
        connect_string: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum SqliteTarget {
    File(PathBuf),
    Memory,
}

impl ConnectionUrl {
    /// The source kind, as used in logs, metrics and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectionUrl::Sqlite(_) => "sqlite",
            ConnectionUrl::Postgres { .. } => "postgres",
            ConnectionUrl::Oracle { .. } => "oracle",
        }
    }
}

impl ConnectionUrl {
    /// The same database with other credentials (per-ScaledObject credentials). `None` keeps
    /// what the URL has.
    pub fn with_credentials(&self, user: Option<&str>, password: Option<&str>) -> ConnectionUrl {
        match self {
            ConnectionUrl::Oracle {
                user: u,
                password: p,
                connect_string,
            } => ConnectionUrl::Oracle {
                user: user.map_or_else(|| u.clone(), str::to_string),
                password: password.map(str::to_string).or_else(|| p.clone()),
                connect_string: connect_string.clone(),
            },
            ConnectionUrl::Postgres { url } => {
                let Some((scheme, rest)) = url.split_once("://") else {
                    return self.clone();
                };
                let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                let (authority, tail) = rest.split_at(authority_end);
                let (userinfo, host) = match authority.rsplit_once('@') {
                    Some((ui, h)) => (Some(ui), h),
                    None => (None, authority),
                };
                let (old_user, old_pw) = match userinfo {
                    Some(ui) => match ui.split_once(':') {
                        Some((u, p)) => (percent_decode(u).unwrap_or_default(), percent_decode(p)),
                        None => (percent_decode(ui).unwrap_or_default(), None),
                    },
                    None => (String::new(), None),
                };
                let replaced = user.is_some() || password.is_some();
                let user = user.map_or(old_user, str::to_string);
                let password = password.map(str::to_string).or(old_pw);
                // `?user=` / `?password=` would override the userinfo: given credentials replace
                // them too, so a URL's own credentials can never ride along with new ones.
                let tail = if replaced {
                    without_credential_params(tail)
                } else {
                    tail.to_string()
                };
                let userinfo = match password {
                    Some(p) => format!("{}:{}@", percent_encode(&user), percent_encode(&p)),
                    None if user.is_empty() => String::new(),
                    None => format!("{}@", percent_encode(&user)),
                };
                ConnectionUrl::Postgres {
                    url: format!("{scheme}://{userinfo}{host}{tail}"),
                }
            }
            ConnectionUrl::Sqlite(_) => self.clone(),
        }
    }

    /// Everything that identifies the database and its credentials, for keyed hashing only:
    /// never print it.
    pub fn identity_for_hashing(&self) -> String {
        match self {
            ConnectionUrl::Sqlite(SqliteTarget::Memory) => "sqlite::memory:".into(),
            ConnectionUrl::Sqlite(SqliteTarget::File(p)) => format!("sqlite:{}", p.display()),
            ConnectionUrl::Postgres { url } => url.clone(),
            ConnectionUrl::Oracle {
                user,
                password,
                connect_string,
            } => {
                format!(
                    "oracle\u{0}{user}\u{0}{}\u{0}{connect_string}",
                    password.as_deref().unwrap_or("")
                )
            }
        }
    }
}

/// `tail` (path, query, fragment) without `user`/`password` query parameters.
fn without_credential_params(tail: &str) -> String {
    let (before, query) = match tail.split_once('?') {
        Some((b, q)) => (b, q),
        None => return tail.to_string(),
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| {
            let name = p.split('=').next().unwrap_or("");
            !name.eq_ignore_ascii_case("user") && !name.eq_ignore_ascii_case("password")
        })
        .collect();
    let mut out = before.to_string();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// The user and whether a password is set, as the database driver will read the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `None`: no user (PostgreSQL refuses to connect; Oracle uses external authentication).
    pub user: Option<String>,
    pub has_password: bool,
    /// A PostgreSQL host that is a Unix-domain socket (a path): a database on this host.
    pub unix_socket: bool,
}

impl ConnectionUrl {
    /// The credentials the driver will use, read with the driver's own URL parser, so a URL
    /// it would refuse at connect time is refused here; the error never quotes the URL.
    pub fn credentials(&self) -> Result<Credentials, String> {
        match self {
            ConnectionUrl::Sqlite(_) => Ok(Credentials {
                user: None,
                has_password: false,
                unix_socket: false,
            }),
            ConnectionUrl::Postgres { url } => {
                use std::error::Error as _;
                let config = url.parse::<tokio_postgres::Config>().map_err(|e| {
                    format!(
                        "is not a valid PostgreSQL URL: {}",
                        e.source()
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| e.to_string())
                    )
                })?;
                Ok(Credentials {
                    user: config
                        .get_user()
                        .filter(|u| !u.is_empty())
                        .map(str::to_string),
                    has_password: config.get_password().is_some_and(|p| !p.is_empty()),
                    unix_socket: config
                        .get_hosts()
                        .iter()
                        .any(|h| !matches!(h, tokio_postgres::config::Host::Tcp(_))),
                })
            }
            ConnectionUrl::Oracle { user, password, .. } => Ok(Credentials {
                user: (!user.is_empty()).then(|| user.clone()),
                has_password: password.as_deref().is_some_and(|p| !p.is_empty()),
                unix_socket: false,
            }),
        }
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl fmt::Display for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionUrl::Sqlite(SqliteTarget::Memory) => f.write_str("sqlite::memory:"),
            ConnectionUrl::Sqlite(SqliteTarget::File(p)) => write!(f, "sqlite:{}", p.display()),
            ConnectionUrl::Postgres { url } => f.write_str(&redact_url(url)),
            ConnectionUrl::Oracle {
                user,
                password,
                connect_string,
            } => {
                let pw = if password.is_some() { ":***" } else { "" };
                write!(
                    f,
                    "oracle://{user}{pw}@{}",
                    connect_string.trim_start_matches('/')
                )
            }
        }
    }
}

impl fmt::Debug for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionUrl({self})")
    }
}

/// Replaces every password in `scheme://user:password@host…?password=…` with `***`; other
/// text is kept. The user is what precedes the first `:` or `@` (as tokio-postgres reads it);
/// the password runs to the *last* `@`, so a password holding a raw `@`, `/`, `?` or `#` is
/// masked whole; query parameters whose name (percent-decoded) holds `password` are masked too.
/// Text that is not such a URL is shown only when it is a `sqlite:` path: anything else (a
/// libpq `host=… password=…` string, an EZConnect `user/password@host`) may hold a password
/// anywhere, so none of it is shown.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return if url.to_ascii_lowercase().starts_with("sqlite:") && !url.contains('@') {
            url.to_string()
        } else {
            NOT_SHOWN.to_string()
        };
    };
    let rest = &url[scheme_end + 3..];
    let mut out = format!("{}://", &url[..scheme_end]);
    let after_last_at = &rest[rest.rfind('@').map_or(0, |at| at + 1)..];
    let tail = match rest.find('@') {
        None => {
            // No userinfo; but `user:secret` without its `@` would be read as host:port (a
            // password cut short, say): an authority that is not hosts and ports is masked.
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            if hosts_and_ports(&rest[..end]) {
                rest
            } else {
                out.push_str("***");
                &rest[end..]
            }
        }
        // tokio-postgres reads up to the first `@` as `user[:password]`; the password may hold
        // a raw `@`, `/`, `?` or `#`, so everything up to the last `@` is masked.
        Some(first_at) => match rest[..first_at].split_once(':') {
            Some((user, _)) => {
                if user.contains(['/', '?', '#', '&', '=', '[']) {
                    out.push_str("***");
                } else {
                    out.push_str(user);
                }
                out.push_str(":***@");
                after_last_at
            }
            // `user/password@…` (the EZConnect habit), or an `@` past the host: masked whole.
            None if rest[..first_at].contains(['/', '?', '#', '&', '=']) => {
                out.push_str("***@");
                after_last_at
            }
            None => rest,
        },
    };
    // Query parameters naming a password: after the `?`, or anywhere in what is left when the
    // `?` was inside the masked part.
    match tail.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            out.push_str(&mask_params(query));
        }
        None => out.push_str(&mask_params(tail)),
    }
    out
}

/// `a=1&password=x&…` with every password parameter's value masked.
fn mask_params(query: &str) -> String {
    query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((key, _)) if is_password_key(key) => format!("{key}=***"),
            _ if is_password_key(param) => "***".to_string(),
            _ => param.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Whether `authority` is comma-separated hosts, each with an optional numeric port.
fn hosts_and_ports(authority: &str) -> bool {
    authority.split(',').all(|h| {
        let port = match h.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((_, "")) => return true,
                Some((_, after)) => after.strip_prefix(':'),
                None => None,
            },
            None => Some(h.rsplit_once(':').map_or("", |(_, p)| p)),
        };
        port.is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()))
    })
}

/// Whether a query parameter's name (percent-decoded, any case) names a password
/// (`password`, `sslpassword`, …).
fn is_password_key(key: &str) -> bool {
    percent_decode(key)
        .unwrap_or_else(|| key.to_string())
        .to_ascii_lowercase()
        .contains("password")
}

/// Whether `s` has a URL scheme's form: a letter, then letters, digits, `+`, `-` or `.`.
pub(super) fn is_scheme(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// What an error shows instead of a value that may hold a password.
const NOT_SHOWN: &str = "(not shown: it may hold a password)";

/// `scheme` if it looks like a URL scheme (followed by `//`, so it cannot be the first half of
/// a `user:password` pair or of a password), else [`NOT_SHOWN`].
fn shown_scheme(scheme: &str, rest: &str) -> String {
    if rest.starts_with("//") && scheme.len() <= 20 && is_scheme(scheme) {
        format!("{scheme:?}")
    } else {
        NOT_SHOWN.to_string()
    }
}

/// Parses a connection URL; the error message never contains the password.
pub fn parse_url(url: &str) -> Result<ConnectionUrl, String> {
    if url == "sqlite::memory:" {
        return Ok(ConnectionUrl::Sqlite(SqliteTarget::Memory));
    }
    let Some((scheme, rest)) = url.split_once(':') else {
        return Err(format!(
            "URL {} has no scheme; expected sqlite:PATH, sqlite::memory:, postgres://…, postgresql://… or oracle://…",
            quoted(&redact_url(url))
        ));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "sqlite" => {
            // Accept sqlite:PATH and sqlite://PATH (so sqlite:///abs/path is /abs/path).
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(
                    "sqlite URL has an empty path; expected sqlite:PATH or sqlite::memory:".into(),
                );
            }
            Ok(ConnectionUrl::Sqlite(SqliteTarget::File(PathBuf::from(
                path,
            ))))
        }
        "postgres" | "postgresql" => {
            if !rest.starts_with("//") {
                return Err(format!(
                    "URL {} must start with {scheme}://",
                    quoted(&redact_url(url))
                ));
            }
            Ok(ConnectionUrl::Postgres {
                url: url.to_string(),
            })
        }
        "oracle" => parse_oracle(url, rest),
        _ => Err(format!(
            "URL scheme {} is not built in (supported: sqlite, postgres, postgresql, oracle)",
            shown_scheme(scheme, rest)
        )),
    }
}

fn parse_oracle(url: &str, rest: &str) -> Result<ConnectionUrl, String> {
    let bad = || {
        format!(
            "URL {} must be oracle://USER[:PASSWORD]@HOST[:PORT]/SERVICE or oracle://USER@TNS_ALIAS",
            quoted(&redact_url(url))
        )
    };
    let rest = rest.strip_prefix("//").ok_or_else(bad)?;
    let (userinfo, target) = rest.rsplit_once('@').ok_or_else(bad)?;
    if userinfo.contains('/') {
        return Err(format!(
            "{}: a password goes after `:` (oracle://USER:PASSWORD@…), not after `/` as in \
             SQL*Plus; better, keep it out of the URL (ORASCALE_<NAME>_PASSWORD or password_file)",
            bad()
        ));
    }
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (u, Some(percent_decode(p).ok_or_else(bad)?)),
        None => (userinfo, None),
    };
    let user = percent_decode(user).ok_or_else(bad)?;
    if target.is_empty() || (user.is_empty() && password.is_some()) {
        return Err(bad());
    }
    // HOST[:PORT]/SERVICE is EZConnect; a bare name is a TNS alias (tnsnames.ora in TNS_ADMIN).
    let connect_string = match target.split_once('/') {
        Some((host, service)) if !host.is_empty() && !service.is_empty() => format!("//{target}"),
        Some(_) => return Err(bad()),
        None => target.to_string(),
    };
    Ok(ConnectionUrl::Oracle {
        user,
        password,
        connect_string,
    })
}

/// A redacted URL in quotes; the "not shown" note as it is.
fn quoted(redacted: &str) -> String {
    if redacted == NOT_SHOWN {
        redacted.to_string()
    } else {
        format!("{redacted:?}")
    }
}

/// `%XX` decoding for user and password in URLs; `None` on a malformed escape.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_credentials_replace_every_old_one() {
        let pg = ConnectionUrl::Postgres {
            url: "postgres://srv:srvpw@h/db?user=srv&sslmode=require&password=srvpw".into(),
        };
        let own = pg.with_credentials(Some("bob"), Some("pw-bob"));
        let ConnectionUrl::Postgres { url } = &own else {
            panic!()
        };
        assert!(!url.contains("srv"), "{url}");
        assert!(url.contains("sslmode=require"), "{url}");
        let c = own.credentials().unwrap();
        assert_eq!(c.user.as_deref(), Some("bob"));
        assert!(c.has_password);
        let cfg: tokio_postgres::Config = url.parse().unwrap();
        assert_eq!(cfg.get_password(), Some(&b"pw-bob"[..]));
        assert_eq!(
            pg.credentials().unwrap(),
            Credentials {
                user: Some("srv".into()),
                has_password: true,
                unix_socket: false,
            }
        );
        let bad = ConnectionUrl::Postgres {
            url: "postgres://u:s3cret@h:notaport/db".into(),
        };
        let e = bad.credentials().unwrap_err();
        assert!(
            e.contains("not a valid PostgreSQL URL") && !e.contains("s3cret"),
            "{e}"
        );
    }

    #[test]
    fn every_password_tokio_postgres_would_read_is_masked() {
        for (url, shown) in [
            ("postgres://u:pw-a@h/db?x=1", "postgres://u:***@h/db?x=1"),
            (
                "postgres://u@h/db?password=pw-a",
                "postgres://u@h/db?password=***",
            ),
            (
                "postgresql://h/db?user=u&password=pw-a&sslmode=require",
                "postgresql://h/db?user=u&password=***&sslmode=require",
            ),
            (
                "postgres://h/db?sslpassword=pw-a&PassWord=pw-a",
                "postgres://h/db?sslpassword=***&PassWord=***",
            ),
            (
                "postgres://h/db?pass%77ord=pw-a",
                "postgres://h/db?pass%77ord=***",
            ),
            ("postgres://u:pa/pw-a@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u:p#pw-a@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            ("postgres://u:p?pw-a@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p@pw-a@h/db", "postgres://u:***@h/db"),
            ("postgres://h/db?password=pw-a@x", "postgres://***@x"),
            ("postgres://h/db?password=pw:a@x", "postgres://***:***@x"),
            ("postgres://h/db?password", "postgres://h/db?***"),
            (
                "oracle://scott:pw-a@db:1521/S",
                "oracle://scott:***@db:1521/S",
            ),
            ("postgres://h,h2:5433/db", "postgres://h,h2:5433/db"),
            (
                "postgres://db.example:5432/shop?user=admin@corp&password=pw-a&sslmode=require",
                "postgres://db.example:***@corp&password=***&sslmode=require",
            ),
            (
                "postgres://[::1]/shop?user=a@b&password=pw-a",
                "postgres://***:***@b&password=***",
            ),
            (
                "oracle://scott/pw-a@db:1521/ORCL",
                "oracle://***@db:1521/ORCL",
            ),
            ("postgres://u:pw-a", "postgres://***"),
            ("postgres://[::1]:5432/db", "postgres://[::1]:5432/db"),
            ("postgres://[::1]/db", "postgres://[::1]/db"),
            ("postgres://u@h:5432/db", "postgres://u@h:5432/db"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
            assert!(!redact_url(url).contains("pw"), "{url}");
        }
    }

    #[test]
    fn a_scheme_is_shown_only_when_it_is_one() {
        let e = parse_url("s3cret:tail").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
        assert!(e.contains("not shown"), "{e}");
    }

    #[test]
    fn text_that_is_not_a_url_is_never_shown() {
        for text in [
            "host=127.0.0.1 port=5432 user=alice password=pw-a dbname=shop",
            "user=alice password=pw-a host=h:5432",
            "alice/pw-a@db:1521/ORCL",
            "pw-a",
        ] {
            let e = parse_url(text).unwrap_err();
            assert!(!e.contains("pw-a"), "{text}: {e}");
            assert!(!redact_url(text).contains("pw-a"), "{text}");
        }
        assert_eq!(redact_url("sqlite:/data/x.db"), "sqlite:/data/x.db");
        assert!(
            parse_url("mysql://u:pw-a@h/db")
                .unwrap_err()
                .contains("\"mysql\" is not built in")
        );
    }

    #[test]
    fn url_forms() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("sqlite::memory:", Ok("sqlite")),
            ("sqlite:/data/x.db", Ok("sqlite")),
            ("sqlite:///data/x.db", Ok("sqlite")),
            ("sqlite:rel.db", Ok("sqlite")),
            ("postgres://u:p@h:5432/db", Ok("postgres")),
            ("postgresql://h/db?sslmode=require", Ok("postgres")),
            (
                "oracle://scott:tiger@db.example.com:1521/FREEPDB1",
                Ok("oracle"),
            ),
            ("oracle://scott@db/ORCL", Ok("oracle")),
            ("oracle://scott/tiger@db:1521/ORCL", Err("not after `/`")),
            ("mysql://u:p@h/db", Err("not built in")),
            ("sqlite:", Err("empty path")),
            ("nourl", Err("no scheme")),
            ("oracle://db:1521/ORCL", Err("oracle://USER")),
            ("oracle://scott@ORCL_ALIAS", Ok("oracle")),
            ("oracle://@WALLET_ALIAS", Ok("oracle")),
            ("oracle://scott@db/", Err("oracle://USER")),
            ("oracle://:pw@db/S", Err("oracle://USER")),
            ("postgres:h/db", Err("must start with")),
        ];
        for (url, want) in cases {
            match (parse_url(url), want) {
                (Ok(u), Ok(kind)) => assert_eq!(u.kind(), *kind, "{url}"),
                (Err(e), Err(frag)) => assert!(e.contains(frag), "{url}: {e}"),
                (got, want) => panic!("{url}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            parse_url("sqlite:///data/x.db").unwrap(),
            ConnectionUrl::Sqlite(SqliteTarget::File("/data/x.db".into()))
        );
        assert_eq!(
            parse_url("sqlite:rel/x.db").unwrap(),
            ConnectionUrl::Sqlite(SqliteTarget::File("rel/x.db".into()))
        );
    }

    #[test]
    fn oracle_url_parts_and_decoding() {
        let u = parse_url("oracle://app%40x:p%3Ass@db:1521/FREEPDB1").unwrap();
        assert_eq!(
            u,
            ConnectionUrl::Oracle {
                user: "app@x".into(),
                password: Some("p:ss".into()),
                connect_string: "//db:1521/FREEPDB1".into()
            }
        );
    }

    #[test]
    fn credentials_are_replaced_in_urls() {
        let pg = parse_url("postgres://app:old@db:5432/shop?sslmode=require").unwrap();
        assert_eq!(
            pg.with_credentials(Some("so-user"), Some("p@ss:w/rd"))
                .identity_for_hashing(),
            "postgres://so-user:p%40ss%3Aw%2Frd@db:5432/shop?sslmode=require"
        );
        assert_eq!(
            pg.with_credentials(None, Some("x")).identity_for_hashing(),
            "postgres://app:x@db:5432/shop?sslmode=require"
        );
        let bare = parse_url("postgres://db/shop").unwrap();
        assert_eq!(
            bare.with_credentials(Some("u"), None)
                .identity_for_hashing(),
            "postgres://u@db/shop"
        );
        let ora = parse_url("oracle://app@db:1521/S").unwrap();
        assert_eq!(
            ora.with_credentials(Some("u"), Some("p")),
            ConnectionUrl::Oracle {
                user: "u".into(),
                password: Some("p".into()),
                connect_string: "//db:1521/S".into()
            }
        );
        // Parsed back, the new password round-trips and is hidden in Display.
        let round = parse_url(
            &pg.with_credentials(None, Some("s3cr3t"))
                .identity_for_hashing(),
        )
        .unwrap();
        assert!(!round.to_string().contains("s3cr3t"));
    }
}
