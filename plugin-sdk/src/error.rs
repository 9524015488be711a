//! [`PluginError`]: what a plugin returns when something goes wrong.

use std::fmt;

/// An error from plugin code: a message for the person reading the daemon's log.
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
}

impl PluginError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        PluginError {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with what was being done, e.g. `config: `.
    pub fn context(self, what: impl fmt::Display) -> Self {
        PluginError {
            message: format!("{what}: {}", self.message),
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
