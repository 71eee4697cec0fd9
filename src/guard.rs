//! The SQL guard: what a ScaledObject's `query` may be. Pure; runs on every metadata parse.
//!
//! It is defence in depth, not the boundary — the database user's grants and the read-only
//! sessions are (docs/security.md). The guard lexes the query the way the databases do (comments,
//! string literals, quoted identifiers, PostgreSQL dollar quoting, Oracle `q'[…]'` quoting) and
//! then applies its rules to the words outside literals and comments only, so neither a string
//! containing `; delete` nor a comment hiding one can fool it.
//!
//! Rules: exactly one statement (one trailing `;` is stripped, since Oracle rejects it); it
//! starts with SELECT or WITH; no data-changing, DDL, transaction or PL/SQL keyword anywhere
//! (`INSERT`, `UPDATE`, `DELETE`, `MERGE`, `DROP`, `BEGIN`, `CALL`, `EXEC`, …); no row locks
//! (`FOR UPDATE`/`FOR SHARE`); no `INTO`; no inline PL/SQL (`WITH FUNCTION`); and, for Oracle
//! connections, no database links (`table@link`) unless the connection allows them.

/// Which database's lexical rules and checks apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Oracle,
    Postgres,
    Sqlite,
}

/// Why a query was refused: the rule, and what in the query broke it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rule}{}", if detail.is_empty() { String::new() } else { format!(" ({detail})") })]
pub struct Rejection {
    pub rule: &'static str,
    pub detail: String,
}

fn reject(rule: &'static str, detail: impl Into<String>) -> Rejection {
    Rejection {
        rule,
        detail: detail.into(),
    }
}

/// Words that change data, structure, transactions or run procedural code.
const FORBIDDEN: &[&str] = &[
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "UPSERT",
    "TRUNCATE",
    "DROP",
    "CREATE",
    "ALTER",
    "GRANT",
    "REVOKE",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "CALL",
    "EXEC",
    "EXECUTE",
    "BEGIN",
    "DECLARE",
    "VACUUM",
    "PRAGMA",
    "ATTACH",
    "DETACH",
    "PREPARE",
    "DEALLOCATE",
    "LISTEN",
    "NOTIFY",
    "SHUTDOWN",
    "PROCEDURE",
    "FUNCTION",
    "TRIGGER",
    "INTO",
];

/// Functions and packages whose effects outlive the query or reach outside it, by dialect: a
/// pooled session's state (an advisory lock or a `set_config(…, false)` stays with the session
/// the next trigger's query gets — another namespace's, perhaps), other sessions (signalling a
/// backend), the server, or the network (Oracle's `UTL_*`, PostgreSQL's `dblink`). A read-only
/// transaction stops none of them. Matched as names, quoted or not, anywhere in the query.
const SIDE_EFFECTS: &[(Dialect, &[&str])] = &[
    (
        Dialect::Postgres,
        &[
            "PG_ADVISORY_LOCK",
            "PG_ADVISORY_LOCK_SHARED",
            "PG_TRY_ADVISORY_LOCK",
            "PG_TRY_ADVISORY_LOCK_SHARED",
            "SET_CONFIG",
            "PG_TERMINATE_BACKEND",
            "PG_CANCEL_BACKEND",
            "PG_RELOAD_CONF",
            "PG_ROTATE_LOGFILE",
            "PG_SWITCH_WAL",
            "PG_PROMOTE",
            "PG_CREATE_RESTORE_POINT",
            "PG_LOGICAL_EMIT_MESSAGE",
            "PG_NOTIFY",
            "LO_IMPORT",
            "LO_EXPORT",
            "DBLINK",
            "DBLINK_EXEC",
            "DBLINK_CONNECT",
            "DBLINK_CONNECT_U",
            "DBLINK_SEND_QUERY",
            // Run a query given as text, where no name above would be seen.
            "QUERY_TO_XML",
            "QUERY_TO_XMLSCHEMA",
            "QUERY_TO_XML_AND_XMLSCHEMA",
            "CURSOR_TO_XML",
            "CURSOR_TO_XMLSCHEMA",
        ],
    ),
    (
        Dialect::Oracle,
        &[
            "DBMS_LOCK",
            "DBMS_PIPE",
            "DBMS_ALERT",
            "DBMS_LDAP",
            "DBMS_SCHEDULER",
            "UTL_HTTP",
            "UTL_TCP",
            "UTL_SMTP",
            "UTL_MAIL",
            "UTL_FILE",
            "UTL_INADDR",
            "HTTPURITYPE",
            "DBURITYPE",
            // Run a query given as text, where no name above would be seen.
            "DBMS_XMLGEN",
            "DBMS_XMLQUERY",
            "DBMS_SQL",
        ],
    ),
    (Dialect::Sqlite, &["LOAD_EXTENSION"]),
];

/// The statement after its one trailing `;`, or why it is refused.
pub fn screen(query: &str, dialect: Dialect, allow_dblinks: bool) -> Result<String, Rejection> {
    let tokens = lex(query, dialect)?;
    // One trailing `;` (Oracle rejects it) is stripped; any other `;` is a second statement.
    let mut end = tokens.len();
    if let Some(Token::Semicolon(pos)) = tokens.last() {
        end -= 1;
        let stripped = query[..*pos].trim_end().to_string();
        return check_tokens(&tokens[..end], dialect, allow_dblinks).map(|()| stripped);
    }
    check_tokens(&tokens, dialect, allow_dblinks).map(|()| query.trim().to_string())
}

fn check_tokens(tokens: &[Token], dialect: Dialect, allow_dblinks: bool) -> Result<(), Rejection> {
    let words: Vec<String> = tokens
        .iter()
        .filter_map(|t| match t {
            Token::Word(w) => Some(w.to_ascii_uppercase()),
            _ => None,
        })
        .collect();
    match tokens.iter().find(|t| !matches!(t, Token::Punct('('))) {
        Some(Token::Word(w))
            if w.eq_ignore_ascii_case("SELECT") || w.eq_ignore_ascii_case("WITH") => {}
        Some(Token::Word(w)) => {
            return Err(reject(
                "the query must be a SELECT or WITH … SELECT",
                format!("it starts with {}", w.to_ascii_uppercase()),
            ));
        }
        _ => return Err(reject("the query must be a SELECT or WITH … SELECT", "")),
    }
    if tokens.iter().any(|t| matches!(t, Token::Semicolon(_))) {
        return Err(reject(
            "exactly one statement is allowed",
            "found a `;` separating statements",
        ));
    }
    for (i, w) in words.iter().enumerate() {
        if w == "FOR" {
            let next = words.get(i + 1).map(String::as_str);
            if matches!(next, Some("UPDATE" | "SHARE" | "NO" | "KEY")) {
                return Err(reject(
                    "row locks are not allowed",
                    "FOR UPDATE / FOR SHARE",
                ));
            }
        }
        if FORBIDDEN.contains(&w.as_str()) {
            let rule = match w.as_str() {
                "INTO" => "SELECT … INTO is not allowed",
                "BEGIN" | "DECLARE" | "FUNCTION" | "PROCEDURE" | "TRIGGER" => {
                    "PL/SQL and procedural blocks are not allowed"
                }
                "CALL" | "EXEC" | "EXECUTE" => "CALL and EXEC are not allowed",
                "UPDATE" if words.get(i.wrapping_sub(1)).is_some_and(|p| p == "FOR") => {
                    "row locks are not allowed"
                }
                _ => "only reading is allowed",
            };
            return Err(reject(rule, format!("keyword {w}")));
        }
    }
    let side_effects = SIDE_EFFECTS
        .iter()
        .find(|(d, _)| *d == dialect)
        .map_or(&[][..], |(_, names)| *names);
    for t in tokens {
        let (Token::Word(name) | Token::Quoted(name)) = t else {
            continue;
        };
        if side_effects
            .iter()
            .any(|f| f.eq_ignore_ascii_case(name.as_str()))
        {
            return Err(reject(
                "functions with effects beyond the query (session state, other sessions, the \
                 server, the network) are not allowed",
                name.to_ascii_lowercase(),
            ));
        }
    }
    if dialect == Dialect::Oracle
        && !allow_dblinks
        && tokens.iter().any(|t| matches!(t, Token::DbLink))
    {
        return Err(reject(
            "database links are not allowed on this connection",
            "`@link` after a name; set allow_dblinks = true on the connection to permit them",
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// An unquoted word: keyword or identifier.
    Word(String),
    /// `;` and its byte offset.
    Semicolon(usize),
    /// `@` directly after a name (Oracle database link).
    DbLink,
    Punct(char),
    /// A literal: its content is never inspected.
    Opaque,
    /// A quoted identifier's text: never a keyword, but a name (a function's, too).
    Quoted(String),
}

/// Splits the query into tokens, skipping comments and the insides of literals.
fn lex(q: &str, dialect: Dialect) -> Result<Vec<Token>, Rejection> {
    let b = q.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut prev_was_name = false;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c.is_ascii_whitespace() {
            i += 1;
            prev_was_name = false;
            continue;
        }
        if c == b'-' && next == Some(b'-') {
            i = q[i..].find('\n').map_or(b.len(), |n| i + n + 1);
            prev_was_name = false;
            continue;
        }
        if c == b'/' && next == Some(b'*') {
            i = skip_block_comment(q, i, dialect)?;
            prev_was_name = false;
            continue;
        }
        // Oracle alternative quoting: q'[...]', Q'{...}', and the national nq'<...>'.
        let national = (c == b'n' || c == b'N')
            && matches!(next, Some(b'q' | b'Q'))
            && b.get(i + 2) == Some(&b'\'');
        if dialect == Dialect::Oracle
            && (national || ((c == b'q' || c == b'Q') && next == Some(b'\'')))
            && !prev_was_name
        {
            i = skip_q_quote(q, i + if national { 3 } else { 2 })?;
            out.push(Token::Opaque);
            prev_was_name = false;
            continue;
        }
        if c == b'\'' {
            // PostgreSQL E'…' allows backslash escapes.
            let backslash = dialect == Dialect::Postgres
                && matches!(out.last(), Some(Token::Word(w)) if w.eq_ignore_ascii_case("e") && i > 0 && !b[i - 1].is_ascii_whitespace());
            if backslash {
                out.pop();
            }
            i = skip_quoted(q, i, b'\'', backslash)?;
            out.push(Token::Opaque);
            prev_was_name = false;
            continue;
        }
        // PostgreSQL's U&"…" spells an identifier with escapes: a name no list could match.
        if c == b'"'
            && dialect == Dialect::Postgres
            && i >= 2
            && b[i - 1] == b'&'
            && b[i - 2].eq_ignore_ascii_case(&b'u')
            && (i == 2 || !(b[i - 3].is_ascii_alphanumeric() || b[i - 3] == b'_'))
        {
            return Err(reject(
                "Unicode-escaped identifiers are not allowed",
                "U&\"…\": write the name itself",
            ));
        }
        if c == b'"'
            || (c == b'`' && dialect == Dialect::Sqlite)
            || (c == b'[' && dialect == Dialect::Sqlite)
        {
            let close = match c {
                b'[' => b']',
                other => other,
            };
            let start = i;
            i = skip_quoted(q, i, close, false)?;
            let doubled = [close as char; 2].iter().collect::<String>();
            let inner = q[start + 1..i - 1].replace(&doubled, &(close as char).to_string());
            out.push(Token::Quoted(inner));
            prev_was_name = true;
            continue;
        }
        if c == b'$'
            && dialect == Dialect::Postgres
            && let Some(end) = dollar_quote(q, i)?
        {
            i = end;
            out.push(Token::Opaque);
            prev_was_name = false;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_alphanumeric()
                    || b[i] == b'_'
                    || b[i] == b'$'
                    || b[i] == b'#'
                    || b[i] >= 0x80)
            {
                i += 1;
            }
            out.push(Token::Word(q[start..i].to_string()));
            prev_was_name = true;
            continue;
        }
        if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            out.push(Token::Opaque);
            prev_was_name = false;
            continue;
        }
        match c {
            b';' => out.push(Token::Semicolon(i)),
            b'@' if prev_was_name && next.is_some_and(|n| n.is_ascii_alphabetic() || n == b'"') => {
                out.push(Token::DbLink)
            }
            other => out.push(Token::Punct(other as char)),
        }
        prev_was_name = false;
        i += 1;
    }
    Ok(out)
}

fn skip_block_comment(q: &str, start: usize, dialect: Dialect) -> Result<usize, Rejection> {
    let b = q.as_bytes();
    let mut depth = 0usize;
    let mut i = start;
    while i + 1 < b.len() {
        if b[i] == b'/' && b[i + 1] == b'*' {
            // PostgreSQL nests block comments; Oracle and SQLite do not.
            if depth == 0 || dialect == Dialect::Postgres {
                depth += 1;
            }
            i += 2;
        } else if b[i] == b'*' && b[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Ok(i);
            }
        } else {
            i += 1;
        }
    }
    Err(reject("unterminated comment", "a /* without its */"))
}

fn skip_quoted(q: &str, start: usize, quote: u8, backslash: bool) -> Result<usize, Rejection> {
    let b = q.as_bytes();
    let mut i = start + 1;
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == quote {
            // A doubled quote is an escaped quote.
            if b.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return Ok(i + 1);
        }
        i += 1;
    }
    Err(reject(
        "unterminated quoted text",
        format!("a {} without its end", quote as char),
    ))
}

fn skip_q_quote(q: &str, open_at: usize) -> Result<usize, Rejection> {
    let b = q.as_bytes();
    let Some(&open) = b.get(open_at) else {
        return Err(reject("unterminated quoted text", "q' without a delimiter"));
    };
    let close = match open {
        b'[' => b']',
        b'{' => b'}',
        b'<' => b'>',
        b'(' => b')',
        other => other,
    };
    let mut i = open_at + 1;
    while i + 1 < b.len() {
        if b[i] == close && b[i + 1] == b'\'' {
            return Ok(i + 2);
        }
        i += 1;
    }
    Err(reject("unterminated quoted text", "q'… without its end"))
}

/// `$tag$ … $tag$` starting at `start`, or `None` when `$` starts no dollar quote (`$1`).
fn dollar_quote(q: &str, start: usize) -> Result<Option<usize>, Rejection> {
    let rest = &q[start + 1..];
    let tag_len = rest.find('$');
    let Some(tag_len) = tag_len else {
        return Ok(None);
    };
    let tag = &rest[..tag_len];
    if !tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || tag.starts_with(|c: char| c.is_ascii_digit())
    {
        return Ok(None);
    }
    let delimiter = format!("${tag}$");
    let body_start = start + delimiter.len();
    match q[body_start..].find(&delimiter) {
        Some(n) => Ok(Some(body_start + n + delimiter.len())),
        None => Err(reject(
            "unterminated quoted text",
            format!("{delimiter} without its end"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Dialect::*;

    /// (query, dialect) that must be refused, and a fragment of the reason.
    const HOSTILE: &[(&str, Dialect, &str)] = &[
        ("delete from jobs", Postgres, "SELECT or WITH"),
        ("DELETE FROM jobs", Oracle, "SELECT or WITH"),
        ("update jobs set status = 'x'", Postgres, "SELECT or WITH"),
        ("insert into jobs values (1)", Sqlite, "SELECT or WITH"),
        (
            "merge into t using s on (1=1) when matched then delete",
            Oracle,
            "SELECT or WITH",
        ),
        ("drop table jobs", Oracle, "SELECT or WITH"),
        ("truncate table jobs", Postgres, "SELECT or WITH"),
        (
            "create table x as select 1 from dual",
            Oracle,
            "SELECT or WITH",
        ),
        ("alter user scott identified by x", Oracle, "SELECT or WITH"),
        ("grant dba to scott", Oracle, "SELECT or WITH"),
        (
            "begin execute immediate 'drop table jobs'; end;",
            Oracle,
            "SELECT or WITH",
        ),
        (
            "declare x number; begin null; end;",
            Oracle,
            "SELECT or WITH",
        ),
        (
            "call dbms_stats.gather_schema_stats('APP')",
            Oracle,
            "SELECT or WITH",
        ),
        ("exec dbms_lock.sleep(10)", Oracle, "SELECT or WITH"),
        ("do $$ begin perform 1; end $$", Postgres, "SELECT or WITH"),
        ("copy jobs to '/tmp/x'", Postgres, "SELECT or WITH"),
        (
            "select 1; delete from jobs",
            Postgres,
            "exactly one statement",
        ),
        (
            "select 1 from dual; drop table jobs;",
            Oracle,
            "exactly one statement",
        ),
        ("select 1;;", Sqlite, "exactly one statement"),
        (
            "select 1 /* ; */ ; delete from jobs",
            Postgres,
            "exactly one statement",
        ),
        (
            "select 1 -- comment\n; delete from jobs",
            Postgres,
            "exactly one statement",
        ),
        (
            "select count(*) from jobs for update",
            Postgres,
            "row locks",
        ),
        (
            "select count(*) from jobs for update skip locked",
            Oracle,
            "row locks",
        ),
        ("select count(*) from jobs for share", Postgres, "row locks"),
        (
            "select count(*) from jobs for no key update",
            Postgres,
            "row locks",
        ),
        ("select * into newtable from jobs", Postgres, "INTO"),
        ("select count(*) into :x from jobs", Oracle, "INTO"),
        (
            "with d as (delete from jobs returning 1) select count(*) from d",
            Postgres,
            "only reading",
        ),
        (
            "with u as (update jobs set s = 1 returning 1) select count(*) from u",
            Postgres,
            "only reading",
        ),
        (
            "with function f return number is begin return 1; end; select f from dual",
            Oracle,
            "exactly one statement",
        ),
        (
            "with function f return number is begin return 1 end select f from dual",
            Oracle,
            "PL/SQL",
        ),
        (
            "select count(*) from jobs@prod_link",
            Oracle,
            "database links",
        ),
        (
            "select count(*) from app.jobs@remote.example.com",
            Oracle,
            "database links",
        ),
        (
            "select count(*) from \"JOBS\"@link",
            Oracle,
            "database links",
        ),
        ("sel/**/ect 1", Postgres, "SELECT or WITH"),
        ("/* select */ delete from jobs", Oracle, "SELECT or WITH"),
        ("select 1 /* unterminated", Postgres, "unterminated comment"),
        ("select 'unterminated", Oracle, "unterminated quoted"),
        ("select $tag$ never closed", Postgres, "unterminated quoted"),
        (
            "select q'[never closed' from dual",
            Oracle,
            "unterminated quoted",
        ),
        (
            "select nq'[ a' ]' ; delete from t --'",
            Oracle,
            "exactly one statement",
        ),
        (
            "select 1 /* /* nested */ ; delete from jobs",
            Postgres,
            "unterminated comment",
        ),
        (
            "select 1 /* /* not nested in oracle */ ; delete from jobs */",
            Oracle,
            "exactly one statement",
        ),
        (
            "select E'it\\'s' ; delete from jobs",
            Postgres,
            "exactly one statement",
        ),
        (
            "select set_config('x', 'y', false); reset all",
            Postgres,
            "exactly one statement",
        ),
        (
            "select count(*) from jobs where exists (select 1 from dual) and 1 = (select 1 from t for update)",
            Oracle,
            "row locks",
        ),
        (
            "select dbms_xmlgen.getxml('begin null; end;') from dual where 1 = 1; commit",
            Oracle,
            "exactly one statement",
        ),
        (
            "select 1 from dual where 1 = 1 union all select 1 from dual; lock table jobs in exclusive mode",
            Oracle,
            "exactly one statement",
        ),
        ("pragma writable_schema = 1", Sqlite, "SELECT or WITH"),
        ("attach database '/tmp/x' as x", Sqlite, "SELECT or WITH"),
        (
            "with x as (select 1) insert into jobs select * from x",
            Sqlite,
            "only reading",
        ),
        ("(delete from jobs)", Postgres, "SELECT or WITH"),
        ("", Postgres, "SELECT or WITH"),
        ("   ;", Oracle, "SELECT or WITH"),
        // Calls whose effects outlive the query or leave it, quoted, qualified or not.
        (
            "select pg_advisory_lock(42)",
            Postgres,
            "(pg_advisory_lock)",
        ),
        (
            "select count(*) from jobs where pg_catalog.pg_try_advisory_lock(1)",
            Postgres,
            "(pg_try_advisory_lock)",
        ),
        (
            "select \"pg_advisory_lock\"(7)",
            Postgres,
            "(pg_advisory_lock)",
        ),
        (
            "select count(*) from jobs, set_config('search_path', 'evil', false)",
            Postgres,
            "(set_config)",
        ),
        (
            "select pg_terminate_backend(pid) from pg_stat_activity",
            Postgres,
            "(pg_terminate_backend)",
        ),
        (
            "select PG_CANCEL_BACKEND(1)",
            Postgres,
            "(pg_cancel_backend)",
        ),
        ("select pg_notify('jobs', 'x')", Postgres, "(pg_notify)"),
        (
            "select * from dblink_exec('dbname=x', 'delete from t')",
            Postgres,
            "(dblink_exec)",
        ),
        (
            "select utl_http.request('http://169.254.169.254/') from dual",
            Oracle,
            "(utl_http)",
        ),
        (
            "select dbms_lock.request(1, 6, 0, false) from dual",
            Oracle,
            "(dbms_lock)",
        ),
        (
            "select \"UTL_INADDR\".get_host_address('x') from dual",
            Oracle,
            "(utl_inaddr)",
        ),
        (
            "select httpuritype('http://h/').getclob() from dual",
            Oracle,
            "(httpuritype)",
        ),
        (
            "select load_extension('/tmp/x.so')",
            Sqlite,
            "(load_extension)",
        ),
        (
            "select count(*) from jobs where query_to_xml('select pg_advisory_lock(42)', true, true, '') is not null",
            Postgres,
            "(query_to_xml)",
        ),
        (
            "select count(*) from jobs where U&\"pg_\\0061dvisory_lock\"(43) is not null",
            Postgres,
            "Unicode-escaped identifiers",
        ),
        (
            "select dbms_xmlgen.getxml('select utl_http.request(''http://h/'') from dual') from dual",
            Oracle,
            "(dbms_xmlgen)",
        ),
    ];

    /// Queries that must pass unchanged (bar one trailing `;`).
    const LEGITIMATE: &[(&str, Dialect)] = &[
        ("select count(*) from jobs", Postgres),
        (
            "SELECT COUNT(*) FROM app.jobs WHERE status = 'QUEUED'",
            Oracle,
        ),
        ("select count(*) from jobs;", Oracle),
        (
            "with q as (select * from jobs where status = 'queued') select count(*) from q",
            Postgres,
        ),
        (
            "with a as (select 1 x from dual), b as (select x from a) select sum(x) from b",
            Oracle,
        ),
        (
            "select /*+ index(j jobs_status_ix) */ count(*) from jobs j where status = 'QUEUED'",
            Oracle,
        ),
        (
            "select count(*) from jobs where note = 'do not delete; update later'",
            Postgres,
        ),
        (
            "select count(*) from jobs where note like '%insert into%'",
            Oracle,
        ),
        (
            "select count(*) from \"Delete\" where \"update\" = 1",
            Postgres,
        ),
        (
            "select count(*) from jobs where status in (select status from active_statuses)",
            Sqlite,
        ),
        (
            "select coalesce(max(created_at_epoch), 0) from jobs",
            Postgres,
        ),
        (
            "select count(*) from jobs where tags @> array['urgent']",
            Postgres,
        ),
        (
            "select count(*) from jobs where owner = q'[O'Brien; delete]'",
            Oracle,
        ),
        (
            "select count(*) from jobs where owner = nq'{O'Brien; delete}'",
            Oracle,
        ),
        (
            "select count(*) from jobs where body = $x$ ; drop table jobs $x$",
            Postgres,
        ),
        (
            "select count(*) from jobs -- only queued; no delete\n where status = 'q'",
            Postgres,
        ),
        ("select count(*) /* ; delete from jobs */ from jobs", Oracle),
        ("(select count(*) from jobs)", Postgres),
        (
            "select count(*) from jobs j join owners o on o.id = j.owner_id where o.email like '%@example.com'",
            Oracle,
        ),
        (
            "select count(*) from jobs where updated_at > sysdate - 1 and deleted_flag = 'N'",
            Oracle,
        ),
        (
            "select count(*) from jobs where status = 'it''s; queued'",
            Oracle,
        ),
        ("select e'a\\'b; c' = 'x'", Postgres),
        ("select count(*) from jobs@prod_link", Oracle),
        ("select count(*) from `order` where [from] = 1", Sqlite),
        (
            "select case when count(*) > 10 then 10 else count(*) end from jobs",
            Postgres,
        ),
        (
            "select count(*) from jobs where created > now() - interval '5 minutes'",
            Postgres,
        ),
        (
            "select 1 /* /* nested in postgres */ ; delete from jobs */",
            Postgres,
        ),
        (
            "select count(*) from jobs where replace(status, ' ', '') = 'QUEUED'",
            Oracle,
        ),
        (
            "select count(*) from jobs where lock_owner is null and set_name = 'a'",
            Postgres,
        ),
        // Names of calls with effects where they are no such call; transaction-scoped locks.
        (
            "select count(*) from jobs where note = 'pg_advisory_lock(1)'",
            Postgres,
        ),
        (
            "select count(*) from jobs where pg_try_advisory_xact_lock(1)",
            Postgres,
        ),
        ("select count(*) from pg_sleep(0.1), jobs", Postgres),
        ("select count(*) from \"Delete\"", Postgres),
        ("select count(*) from t where \"a\"\"b\" = 1", Postgres),
        ("select count(*) from utl_http_log", Oracle),
    ];

    #[test]
    fn hostile_queries_are_refused_with_the_rule() {
        assert!(HOSTILE.len() >= 40);
        for (q, dialect, frag) in HOSTILE {
            match screen(q, *dialect, false) {
                Ok(_) => panic!("{dialect:?} accepted: {q}"),
                Err(e) => assert!(e.to_string().contains(frag), "{q}: {e} lacks {frag:?}"),
            }
        }
    }

    #[test]
    fn legitimate_queries_pass() {
        assert!(LEGITIMATE.len() >= 20);
        for (q, dialect) in LEGITIMATE {
            // The db-link case is legitimate only where the connection allows links.
            let allow = q.contains("@prod_link");
            match screen(q, *dialect, allow) {
                Ok(stripped) => assert_eq!(stripped, q.trim_end_matches(';').trim(), "{q}"),
                Err(e) => panic!("{dialect:?} refused {q}: {e}"),
            }
        }
    }

    #[test]
    fn one_trailing_semicolon_is_stripped() {
        assert_eq!(
            screen("select 1 from dual ;  ", Oracle, false).unwrap(),
            "select 1 from dual"
        );
        assert_eq!(
            screen("select 1 from dual -- done\n;", Oracle, false).unwrap(),
            "select 1 from dual -- done"
        );
    }

    #[test]
    fn arbitrary_input_never_panics() {
        use proptest::prelude::*;
        proptest!(|(q in ".{0,200}")| {
            for d in [Oracle, Postgres, Sqlite] {
                let _ = screen(&q, d, false);
            }
        });
    }
}
