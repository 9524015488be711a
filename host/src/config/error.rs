//! [`ConfigError`]: one problem in a module's files, with file, line, column and field, what was
//! expected, and for a misspelled name the closest real one.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use super::yaml::Pos;

/// One problem found in a module. Validation collects all of them before giving up.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConfigError {
    /// The file, relative to the module directory when it lies inside it.
    pub file: PathBuf,
    /// Where in the file, when known.
    #[serde(flatten)]
    pub pos: Option<Pos>,
    /// The field path inside the file, e.g. `routes[2].transforms[0].ref`; empty for the file itself.
    pub field: String,
    /// What is wrong, and what was expected.
    pub message: String,
}

impl ConfigError {
    pub fn new(
        file: impl Into<PathBuf>,
        pos: Option<Pos>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.into(),
            pos,
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    /// `routes/ci.yaml:14:7: routes[2].transforms[0].ref: unknown transform "x"; did you mean "y"?`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(p) = self.pos {
            write!(f, ":{}:{}", p.line, p.col)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// `; did you mean "x"?` for the candidate closest to `name`, if one is close enough to be a typo.
/// Distances are optimal string alignment (a swap of two neighbouring letters, as in `snik` for
/// `sink`, is one edit) and ignore case.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    let lower = name.to_lowercase();
    let best = candidates
        .into_iter()
        .map(|c| (strsim::osa_distance(&lower, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= (name.len().max(c.len()) / 3).max(1))
        .min();
    match best {
        Some((_, c)) => format!("; did you mean \"{c}\"?"),
        None => String::new(),
    }
}

/// Prints errors one per line, for the CLI.
pub fn render(errors: &[ConfigError]) -> String {
    errors.iter().map(|e| format!("{e}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transposition_and_a_change_of_case_are_one_typo_away() {
        assert_eq!(
            did_you_mean("snik", ["sink", "source"]),
            "; did you mean \"sink\"?"
        );
        assert_eq!(
            did_you_mean("Notify", ["notify"]),
            "; did you mean \"notify\"?"
        );
    }

    #[test]
    fn suggests_only_close_names() {
        assert_eq!(
            did_you_mean("drop-author", ["drop-authors", "dedup"]),
            "; did you mean \"drop-authors\"?"
        );
        assert_eq!(did_you_mean("zzz", ["drop-authors", "dedup"]), "");
    }

    #[test]
    fn displays_file_position_field_message() {
        let e = ConfigError::new(
            "routes/ci.yaml",
            Some(Pos { line: 14, col: 7 }),
            "routes[2].then.actor",
            "unknown actor \"x\"",
        );
        assert_eq!(
            e.to_string(),
            "routes/ci.yaml:14:7: routes[2].then.actor: unknown actor \"x\""
        );
    }
}
