//! Reading a module directory: `orgloop.yaml`, the group files it lists, every `routes/*.yaml`,
//! and the module's own `.env`, into the raw model with positions kept for error messages.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::error::did_you_mean;
use super::raw;
use super::yaml::{self, YamlDoc};
use super::ConfigError;

/// One parsed file: its raw model and where each field was written.
pub struct Parsed<T> {
    /// Path relative to the module directory (for messages).
    pub rel: PathBuf,
    pub doc: YamlDoc,
    pub value: T,
}

impl<T> Parsed<T> {
    pub fn error(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.rel.clone(), self.doc.pos(field), field, message)
    }

    pub fn origin(&self, field: String) -> super::spec::Origin {
        super::spec::Origin {
            file: self.rel.clone(),
            pos: self.doc.pos(&field),
            field,
        }
    }
}

/// Everything read from a module directory, before cross-file validation.
pub struct RawModule {
    pub dir: PathBuf,
    pub project: Parsed<raw::Project>,
    pub connectors: Vec<Parsed<raw::ConnectorGroup>>,
    pub transforms: Vec<Parsed<raw::TransformGroup>>,
    pub loggers: Vec<Parsed<raw::LoggerGroup>>,
    pub routes: Vec<Parsed<raw::RouteGroup>>,
}

/// Variables for `${VAR}`: the process environment wins, then the module's `.env` (as upstream,
/// but without writing the `.env` into the process, so modules never see each other's).
pub struct Env {
    dotenv: HashMap<String, String>,
}

impl Env {
    pub fn lookup(&self, name: &str) -> Option<String> {
        std::env::var(name)
            .ok()
            .or_else(|| self.dotenv.get(name).cloned())
    }
}

/// The largest module file (YAML, `.env`, SOP) the daemon reads: far beyond any real one, and
/// small enough that a file saved there by mistake (a log, a build) cannot fill its memory.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Reads a text file of at most [`MAX_FILE_BYTES`]; a larger one is an error (read no further
/// than the limit, so a file that keeps growing cannot hold the reader either).
pub fn read_text(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "larger than {} KiB, the most a module file may hold",
                MAX_FILE_BYTES / 1024
            ),
        ));
    }
    Ok(text)
}

/// Reads `KEY=value` lines; `#` comments, blank lines, `export ` prefixes and surrounding quotes
/// are handled.
pub fn parse_dotenv(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (k, v) = line.split_once('=')?;
            let v = v.trim();
            let v = ['"', '\'']
                .iter()
                .find_map(|q| v.strip_prefix(*q).and_then(|s| s.strip_suffix(*q)))
                .unwrap_or(v);
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

/// Reads and parses a module directory. Collects every error it can find.
pub fn read_module(dir: &Path) -> Result<RawModule, Vec<ConfigError>> {
    let dir = dir.canonicalize().map_err(|e| {
        vec![ConfigError::new(
            dir,
            None,
            "",
            format!("cannot open module directory: {e}"),
        )]
    })?;
    let mut errors = Vec::new();
    let dotenv = match read_text(&dir.join(".env")) {
        Ok(text) => parse_dotenv(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
        Err(e) => {
            errors.push(ConfigError::new(
                ".env",
                None,
                "",
                format!("cannot read: {e}"),
            ));
            HashMap::new()
        }
    };
    let env = Env { dotenv };

    let project = parse_file::<raw::Project>(&dir, Path::new("orgloop.yaml"), &env)
        .map_err(|e| vec![e])??;
    if project.value.api_version != "orgloop/v1alpha1" {
        errors.push(project.error(
            "apiVersion",
            format!(
                "expected \"orgloop/v1alpha1\", found {:?}",
                project.value.api_version
            ),
        ));
    }
    if project.value.kind != "Project" {
        errors.push(project.error(
            "kind",
            format!("expected \"Project\", found {:?}", project.value.kind),
        ));
    }

    let mut groups = |list: &[String], field: &str, kind: &str| -> Vec<PathBuf> {
        let mut files = Vec::new();
        for (i, f) in list.iter().enumerate() {
            if dir.join(f).is_file() {
                files.push(PathBuf::from(f));
            } else {
                errors.push(project.error(
                    &format!("{field}[{i}]"),
                    format!("{kind} file {f:?} does not exist"),
                ));
            }
        }
        files
    };
    let connector_files = groups(&project.value.connectors, "connectors", "connector group");
    let transform_files = groups(&project.value.transforms, "transforms", "transform group");
    let logger_files = groups(&project.value.loggers, "loggers", "logger group");
    let route_files = discover_routes(&dir);

    let connectors = read_all(&dir, &connector_files, "ConnectorGroup", &env, &mut errors);
    let transforms = read_all(&dir, &transform_files, "TransformGroup", &env, &mut errors);
    let loggers = read_all(&dir, &logger_files, "LoggerGroup", &env, &mut errors);
    let routes = read_all(&dir, &route_files, "RouteGroup", &env, &mut errors);

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(RawModule {
        dir,
        project,
        connectors,
        transforms,
        loggers,
        routes,
    })
}

/// Parses group files of one kind, collecting their errors.
fn read_all<T: DeserializeOwned + Header>(
    dir: &Path,
    files: &[PathBuf],
    kind: &str,
    env: &Env,
    errors: &mut Vec<ConfigError>,
) -> Vec<Parsed<T>> {
    let mut out = Vec::new();
    for f in files {
        match parse_file::<T>(dir, f, env) {
            Err(e) => errors.push(e),
            Ok(Err(errs)) => errors.extend(errs),
            Ok(Ok(parsed)) => {
                check_header(&parsed, kind, errors);
                out.push(parsed);
            }
        }
    }
    out
}

/// `routes/*.yaml` and `routes/*.yml`, in name order (discovered, not listed, as upstream).
fn discover_routes(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("routes"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .filter_map(|p| p.strip_prefix(dir).ok().map(Path::to_path_buf))
        .collect();
    files.sort();
    files
}

/// Group files have an optional `apiVersion`/`kind`; when present they must be right.
trait Header {
    fn header(&self) -> (Option<&str>, Option<&str>);
}

macro_rules! header {
    ($($t:ty),*) => {$(
        impl Header for $t {
            fn header(&self) -> (Option<&str>, Option<&str>) {
                (self.api_version.as_deref(), self.kind.as_deref())
            }
        }
    )*};
}
header!(
    raw::ConnectorGroup,
    raw::TransformGroup,
    raw::LoggerGroup,
    raw::RouteGroup
);

fn check_header<T: Header>(parsed: &Parsed<T>, kind: &str, errors: &mut Vec<ConfigError>) {
    let (api, k) = parsed.value.header();
    if let Some(api) = api.filter(|a| *a != "orgloop/v1alpha1") {
        errors.push(parsed.error(
            "apiVersion",
            format!("expected \"orgloop/v1alpha1\", found {api:?}"),
        ));
    }
    if let Some(k) = k.filter(|k| *k != kind) {
        errors.push(parsed.error(
            "kind",
            format!("expected {kind:?} in this file, found {k:?}"),
        ));
    }
}

/// Reads and parses one file. The outer error is a file that cannot be read or parsed as YAML;
/// the inner errors are schema errors.
fn parse_file<T: DeserializeOwned>(
    dir: &Path,
    rel: &Path,
    env: &Env,
) -> Result<Result<Parsed<T>, Vec<ConfigError>>, ConfigError> {
    let text = read_text(&dir.join(rel))
        .map_err(|e| ConfigError::new(rel, None, "", format!("cannot read: {e}")))?;
    let doc = yaml::parse(&text, &|name| env.lookup(name))
        .map_err(|e| ConfigError::new(rel, Some(e.pos), "", e.message))?;
    match serde_path_to_error::deserialize::<_, T>(&doc.value) {
        Ok(value) => Ok(Ok(Parsed {
            rel: rel.to_path_buf(),
            doc,
            value,
        })),
        Err(e) => {
            let mut field = e.path().to_string();
            if field == "." {
                field.clear();
            }
            let mut message = e.inner().to_string();
            // serde lists every expected field; suggest the closest instead. (The path already ends
            // at the unknown field.)
            if let Some((unknown, expected)) = parse_unknown_field(&message) {
                message = format!(
                    "unknown field \"{unknown}\"{}",
                    did_you_mean(&unknown, expected.iter().map(String::as_str))
                );
            }
            Ok(Err(vec![ConfigError::new(
                rel,
                doc.pos(&field),
                field,
                message,
            )]))
        }
    }
}

/// Splits serde's "unknown field `x`, expected one of `a`, `b`" into `x` and `[a, b]`.
fn parse_unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (name, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((name.to_owned(), expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_handles_comments_quotes_and_export() {
        let env = parse_dotenv("# c\nA=1\nexport B=\"two words\"\nC='x=y'\n\nbad line\n");
        assert_eq!(env.get("A").map(String::as_str), Some("1"));
        assert_eq!(env.get("B").map(String::as_str), Some("two words"));
        assert_eq!(env.get("C").map(String::as_str), Some("x=y"));
        assert_eq!(env.len(), 3);
    }

    #[test]
    fn unknown_field_messages_are_split() {
        let (name, expected) =
            parse_unknown_field("unknown field `trasforms`, expected one of `name`, `transforms`")
                .unwrap();
        assert_eq!(name, "trasforms");
        assert_eq!(expected, vec!["name", "transforms"]);
    }
}
