//! Event logging with upstream's phases (`source.emit`, `route.match`, `transform.drop`,
//! `deliver.success`, ...): console lines for people and JSON lines for machines, every entry
//! tagged with its module.
//!
//! Writing happens on a thread per logger, fed through a channel, so the event path only formats
//! an entry and never waits on a terminal or a disk. Entries below every logger's level are not
//! even built.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Sender};
use std::thread::JoinHandle;

use orgloop_plugin_sdk::{format_timestamp, Event};
use serde::Serialize;
use tracing::Level;

use crate::config::spec::{LoggerKind, LoggerSpec};

/// The log phases, as upstream names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    SourceEmit,
    SourceError,
    RouteMatch,
    RouteNoMatch,
    TransformStart,
    TransformPass,
    TransformDrop,
    TransformError,
    TransformErrorDrop,
    TransformErrorHalt,
    DeliverAttempt,
    DeliverSuccess,
    DeliverFailure,
    /// A failed delivery will be tried again.
    DeliverRetry,
    /// A delivery went to the dead letters.
    DeliverDead,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::SourceEmit => "source.emit",
            Phase::SourceError => "system.error",
            Phase::RouteMatch => "route.match",
            Phase::RouteNoMatch => "route.no_match",
            Phase::TransformStart => "transform.start",
            Phase::TransformPass => "transform.pass",
            Phase::TransformDrop => "transform.drop",
            Phase::TransformError => "transform.error",
            Phase::TransformErrorDrop => "transform.error_drop",
            Phase::TransformErrorHalt => "transform.error_halt",
            Phase::DeliverAttempt => "deliver.attempt",
            Phase::DeliverSuccess => "deliver.success",
            Phase::DeliverFailure => "deliver.failure",
            Phase::DeliverRetry => "deliver.retry",
            Phase::DeliverDead => "deliver.dead",
        }
    }

    /// How important the phase is, for the loggers' `level`.
    pub fn level(self) -> Level {
        match self {
            Phase::TransformStart | Phase::TransformPass | Phase::RouteNoMatch => Level::DEBUG,
            Phase::TransformError
            | Phase::TransformErrorDrop
            | Phase::DeliverFailure
            | Phase::DeliverRetry => Level::WARN,
            Phase::TransformErrorHalt | Phase::SourceError | Phase::DeliverDead => Level::ERROR,
            _ => Level::INFO,
        }
    }
}

/// One log entry, in upstream's `LogEntry` shape.
#[derive(Debug, Default, Serialize)]
pub struct Entry<'a> {
    pub timestamp: String,
    pub event_id: &'a str,
    pub trace_id: &'a str,
    pub phase: &'static str,
    pub module: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transform: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<&'a Event>,
    pub orgloop_version: &'static str,
}

/// Details of one entry beyond the event and phase.
#[derive(Default, Clone, Copy)]
pub struct Detail<'a> {
    pub route: Option<&'a str>,
    pub target: Option<&'a str>,
    pub transform: Option<&'a str>,
    pub result: Option<&'a str>,
    pub duration_ms: Option<f64>,
    pub error: Option<&'a str>,
    /// Which attempt of a delivery (1, 2, ...).
    pub attempt: Option<u32>,
    /// For `deliver.retry`: the wait before the next attempt.
    pub retry_in_ms: Option<u64>,
}

struct Sink {
    level: Level,
    format: Format,
    tx: Sender<Vec<u8>>,
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Console { show_payload: bool },
    Json,
}

/// The loggers of one module.
pub struct Loggers {
    module: String,
    sinks: Vec<Sink>,
    /// The most detailed level any sink wants; `None` when there are no sinks.
    max_level: Option<Level>,
    writers: Vec<JoinHandle<()>>,
}

impl Loggers {
    /// Starts the writers of `specs`. A file that cannot be opened is an error.
    pub fn start(module: &str, specs: &[LoggerSpec]) -> Result<Loggers, String> {
        let mut sinks = Vec::new();
        let mut writers = Vec::new();
        for spec in specs {
            let (format, out): (Format, Box<dyn Write + Send>) = match &spec.kind {
                LoggerKind::Console { show_payload } => (
                    Format::Console {
                        show_payload: *show_payload,
                    },
                    Box::new(std::io::stderr()),
                ),
                LoggerKind::File { path } => (
                    Format::Json,
                    Box::new(open_append(path).map_err(|e| {
                        format!("logger {}: cannot open {}: {e}", spec.name, path.display())
                    })?),
                ),
            };
            let (tx, rx) = channel::<Vec<u8>>();
            let writer = std::thread::Builder::new()
                .name(format!("log-{}", spec.name))
                .spawn(move || {
                    let mut out = out;
                    while let Ok(first) = rx.recv() {
                        // Batch whatever else is queued into one write of whole lines.
                        let mut batch = first;
                        while let Ok(more) = rx.try_recv() {
                            batch.extend_from_slice(&more);
                        }
                        let _ = out.write_all(&batch).and_then(|_| out.flush());
                    }
                })
                .map_err(|e| e.to_string())?;
            writers.push(writer);
            sinks.push(Sink {
                level: spec.level,
                format,
                tx,
            });
        }
        let max_level = sinks.iter().map(|s| s.level).max();
        Ok(Loggers {
            module: module.to_owned(),
            sinks,
            max_level,
            writers,
        })
    }

    /// Whether any logger wants entries of `phase`.
    pub fn enabled(&self, phase: Phase) -> bool {
        self.max_level.is_some_and(|max| phase.level() <= max)
    }

    /// Logs one phase of one event.
    pub fn log(&self, phase: Phase, event: &Event, detail: Detail<'_>) {
        if !self.enabled(phase) {
            return;
        }
        let mut entry = Entry {
            timestamp: format_timestamp(std::time::SystemTime::now()),
            event_id: event.id(),
            trace_id: event.trace_id().unwrap_or_default(),
            phase: phase.as_str(),
            module: &self.module,
            source: Some(event.source()),
            target: detail.target,
            route: detail.route,
            transform: detail.transform,
            event_type: Some(event.type_name()),
            result: detail.result,
            duration_ms: detail.duration_ms,
            error: detail.error,
            attempt: detail.attempt,
            retry_in_ms: detail.retry_in_ms,
            payload: None,
            orgloop_version: env!("CARGO_PKG_VERSION"),
        };
        for sink in self.sinks.iter().filter(|s| phase.level() <= s.level) {
            let line = match sink.format {
                Format::Json => {
                    let mut line = serde_json::to_vec(&entry).unwrap_or_default();
                    line.push(b'\n');
                    line
                }
                Format::Console { show_payload } => {
                    entry.payload = show_payload.then_some(event);
                    console_line(&entry).into_bytes()
                }
            };
            let _ = sink.tx.send(line);
        }
    }
}

impl Drop for Loggers {
    /// Closes the channels and waits until everything queued is written.
    fn drop(&mut self) {
        self.sinks.clear();
        for w in self.writers.drain(..) {
            let _ = w.join();
        }
    }
}

fn open_append(path: &PathBuf) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// `12:00:01.234 [module] deliver.success evt_… github → route/actor (3.1 ms)`.
fn console_line(e: &Entry<'_>) -> String {
    let time = e.timestamp.get(11..23).unwrap_or(&e.timestamp);
    let mut line = format!(
        "{time} [{}] {:<20} {} {}",
        e.module,
        e.phase,
        e.event_id,
        e.source.unwrap_or_default()
    );
    if let Some(r) = e.route {
        line.push_str(&format!(" → {r}"));
    }
    for (label, v) in [
        ("transform", e.transform),
        ("actor", e.target),
        ("result", e.result),
        ("error", e.error),
    ] {
        if let Some(v) = v {
            line.push_str(&format!(" {label}={v}"));
        }
    }
    if let Some(n) = e.attempt {
        line.push_str(&format!(" attempt={n}"));
    }
    if let Some(ms) = e.retry_in_ms {
        line.push_str(&format!(" retry_in={:.1}s", ms as f64 / 1000.0));
    }
    if let Some(d) = e.duration_ms {
        line.push_str(&format!(" ({d:.1} ms)"));
    }
    if let Some(p) = e.payload {
        line.push_str(&format!(" payload={}", p.payload()));
    }
    line.push('\n');
    line
}
