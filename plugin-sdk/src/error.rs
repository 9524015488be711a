//! [`PluginError`]: what a plugin returns when something goes wrong.

use std::fmt;
use std::time::Duration;

/// An error from plugin code: a message for the person reading the daemon's log, and, for an
/// actor's delivery, whether trying again may help.
///
/// A failed delivery is retried by the daemon with backoff (see the actor's `retry:` policy),
/// unless the error is [`permanent`](Self::permanent): then it goes to the dead letters at once.
/// An actor that knows when to try again (an HTTP `Retry-After`) says so with
/// [`with_retry_after`](Self::with_retry_after).
///
/// Any `std::error::Error` converts into it, so `?` works on serde, parse and I/O errors:
///
/// ```
/// use orgloop_plugin_sdk::PluginError;
/// fn parse(n: &str) -> Result<u32, PluginError> {
///     Ok(n.parse::<u32>()?)
/// }
/// assert!(parse("x").unwrap_err().message().contains("invalid digit"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct PluginError {
    message: String,
    permanent: bool,
    retry_after: Option<Duration>,
}

impl PluginError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        PluginError {
            message: message.into(),
            permanent: false,
            retry_after: None,
        }
    }

    /// Marks the error as final: retrying the same delivery cannot succeed (a `400 Bad Request`,
    /// a payload the target refuses). The daemon dead-letters it instead of retrying.
    ///
    /// ```
    /// use orgloop_plugin_sdk::PluginError;
    /// assert!(PluginError::new("HTTP 400").permanent().is_permanent());
    /// assert!(!PluginError::new("HTTP 503").is_permanent());
    /// ```
    pub fn permanent(mut self) -> Self {
        self.permanent = true;
        self
    }

    /// Whether the error is final (see [`permanent`](Self::permanent)).
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// Asks the daemon to wait at least `after` before the next attempt (an HTTP `Retry-After`).
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The wait asked for with [`with_retry_after`](Self::with_retry_after).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with what was being done, e.g. `config: `.
    pub fn context(self, what: impl fmt::Display) -> Self {
        PluginError {
            message: format!("{what}: {}", self.message),
            ..self
        }
    }
}

impl<E: std::error::Error> From<E> for PluginError {
    fn from(e: E) -> Self {
        PluginError::new(e.to_string())
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PluginError({:?})", self.message)
    }
}
