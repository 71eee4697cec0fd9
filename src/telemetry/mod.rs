//! Logs, metrics and the admin HTTP endpoints. A leaf: it imports no other module of the
//! crate (components receive their metric handles, with their labels, at construction).
//!
//! - [`metrics`]: every metric name, its description, and the functions that record it.
//! - [`http`]: `/metrics`, `/healthz` and `/readyz` on `--metrics-listen`.
//!
//! Text logs are one event per line, whatever a logged value holds: [`EscapedFields`] escapes
//! control characters in every field and message, so a value from a request or a database
//! (a metadata value, a metric name, an error text) cannot start a forged line. JSON logs need
//! nothing more: serde_json escapes every control character in a string.

pub mod http;
pub mod metrics;

use std::fmt;
use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::{DefaultFields, FormatFields, Writer};
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written (`--log-format`): defined here, with the logging it selects;
/// `config` parses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global `tracing` subscriber: `RUST_LOG` filtering (default `info`), text or
/// JSON lines on stderr. Safe to call more than once (later calls are no-ops).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = subscriber(
        format,
        filter,
        std::io::stderr().is_terminal(),
        std::io::stderr,
    )
    .try_init();
}

/// The subscriber [`init_logging`] installs, writing to `writer` (tests capture it).
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.fmt_fields(EscapedFields).finish()),
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
    }
}

/// tracing-subscriber's field formatting (`key=value …`, the message first), with control
/// characters escaped: tracing-subscriber itself escapes only terminal escapes (ESC, BEL, …),
/// not line breaks, and writes `%`-formatted values and messages as they are.
#[derive(Debug, Default, Clone, Copy)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        // Formatted plain first (no colours, so no escape sequence of our own is escaped).
        let mut plain = String::new();
        DefaultFields::new().format_fields(Writer::new(&mut plain), fields)?;
        escape_into(&mut writer, &plain)
    }
}

/// Writes `text` with line breaks, tabs, every other control character, the Unicode line and
/// paragraph separators and the bidirectional overrides (which can make a line read as
/// another) escaped as `\n`, `\r`, `\t` or `\u{…}`.
fn escape_into(out: &mut impl fmt::Write, text: &str) -> fmt::Result {
    let mut rest = text;
    while let Some(at) = rest.find(needs_escape) {
        out.write_str(&rest[..at])?;
        let c = rest[at..].chars().next().expect("found a char");
        match c {
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c => write!(out, "\\u{{{:x}}}", u32::from(c))?,
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.write_str(rest)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn escapes_what_could_break_or_disguise_a_line() {
        let mut out = String::new();
        escape_into(
            &mut out,
            "a\nb\r\tc\u{0}d\u{1b}[31m\u{7f}\u{85}\u{2028}\u{202e}é🚀\\n",
        )
        .unwrap();
        assert_eq!(
            out,
            "a\\nb\\r\\tc\\u{0}d\\u{1b}[31m\\u{7f}\\u{85}\\u{2028}\\u{202e}é🚀\\n"
        );
    }

    /// Log output captured in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// One event through the subscriber `init_logging` installs, in `format`.
    fn log_one(format: LogFormat) -> String {
        let out = Captured::default();
        let sink = out.clone();
        let sub = subscriber(format, EnvFilter::new("info"), false, move || sink.clone());
        let forged = "so\nERROR orascale::engine::poller: poller stopped";
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("call", scaledobject = %forged);
            let _entered = span.enter();
            tracing::warn!(
                scaledobject = %forged,
                debug = ?forged,
                error = %"db said:\r\nERROR forged\u{1b}[2K",
                "poll of {forged} failed"
            );
        });
        out.text()
    }

    #[test]
    fn a_forged_line_stays_on_its_own_line_in_text_logs() {
        let text = log_one(LogFormat::Text);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("WARN"), "{text}");
        assert!(
            text.contains("scaledobject=so\\nERROR orascale::engine::poller: poller stopped"),
            "{text}"
        );
        assert!(text.contains("poll of so\\nERROR"), "{text}");
        assert!(text.contains("error=db said:\\r\\nERROR forged"), "{text}");
        assert!(text.contains("call{scaledobject=so\\nERROR"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
    }

    #[test]
    fn json_logs_are_escaped_by_serde() {
        let text = log_one(LogFormat::Json);
        assert_eq!(text.lines().count(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(
            v["scaledobject"],
            "so\nERROR orascale::engine::poller: poller stopped"
        );
        assert_eq!(v["error"], "db said:\r\nERROR forged\u{1b}[2K");
    }
}
