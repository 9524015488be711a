//! YAML text → JSON value, remembering where each value was written.
//!
//! serde's YAML deserializers keep no positions, yet every config error must name its line and
//! column. So this walks the YAML parser's events itself, builds a `serde_json::Value`, and records
//! the position of every path (`routes[2].when.source`, the same spelling serde_path_to_error
//! uses). Typed deserialization then runs on the JSON value, and any error path maps back to a
//! line and column. `${VAR}` references in string values are substituted on the way, as upstream
//! does for every string of every file.

use std::collections::HashMap;

use serde_json::{Map, Number, Value as Json};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl From<Marker> for Pos {
    fn from(m: Marker) -> Self {
        Pos {
            line: m.line(),
            col: m.col() + 1,
        }
    }
}

/// A parsed YAML document.
#[derive(Debug, Default)]
pub struct YamlDoc {
    pub value: Json,
    positions: HashMap<String, Pos>,
}

impl YamlDoc {
    /// Where the value at `path` was written (for a map entry: where its key is). Falls back to
    /// the closest enclosing path that has a position.
    pub fn pos(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

/// An error in YAML syntax, or an unset `${VAR}`.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

/// Most values one file may hold, aliases expanded. Aliases are allowed (upstream's YAML may use
/// anchors to share a config block), but each one copies its anchor's value: ten aliases nested
/// nine deep make 10^9 values from 11 lines. A real module file holds a few thousand.
pub const MAX_VALUES: usize = 100_000;

enum Frame {
    Seq {
        path: String,
        items: Vec<Json>,
        anchor: usize,
        /// Values counted before this one started (its size is the difference at its end).
        start: usize,
    },
    Map {
        path: String,
        entries: Map<String, Json>,
        key: Option<String>,
        anchor: usize,
        start: usize,
    },
}

/// Counts the values a file produces, aliases expanded, and refuses more than [`MAX_VALUES`].
#[derive(Default)]
struct Budget {
    values: usize,
    /// Values in each anchored node, by anchor id.
    anchored: HashMap<usize, usize>,
}

impl Budget {
    fn take(&mut self, n: usize, pos: Pos) -> Result<(), YamlError> {
        self.values = self.values.saturating_add(n);
        if self.values > MAX_VALUES {
            return Err(YamlError {
                pos,
                message: format!(
                    "more than {MAX_VALUES} values once aliases are expanded (aliases that nest \
                     aliases multiply); write the values out, or share less"
                ),
            });
        }
        Ok(())
    }

    fn anchor(&mut self, anchor: usize, start: usize) {
        if anchor > 0 {
            self.anchored.insert(anchor, self.values - start);
        }
    }
}

/// Parses one YAML document. `lookup` resolves `${VAR}`.
pub fn parse(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<YamlDoc, YamlError> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Json> = HashMap::new();
    let mut budget = Budget::default();
    let mut doc = YamlDoc::default();
    let mut root: Option<Json> = None;
    loop {
        let (event, mark) = parser.next_token().map_err(|e| YamlError {
            pos: (*e.marker()).into(),
            message: e.info().to_owned(),
        })?;
        let pos = Pos::from(mark);
        // The path the next value gets, or `None` when the value is a map key.
        let next_path = match stack.last() {
            None => Some(String::new()),
            Some(Frame::Seq { path, items, .. }) => Some(format!("{path}[{}]", items.len())),
            Some(Frame::Map { key: None, .. }) => None,
            Some(Frame::Map {
                path, key: Some(k), ..
            }) => Some(join(path, k)),
        };
        let value = match event {
            Event::StreamEnd | Event::DocumentEnd => break,
            Event::Nothing | Event::StreamStart | Event::DocumentStart => continue,
            Event::SequenceStart(anchor, _) => {
                if let Some(p) = &next_path {
                    doc.positions.entry(p.clone()).or_insert(pos);
                }
                stack.push(Frame::Seq {
                    path: next_path.unwrap_or_default(),
                    items: Vec::new(),
                    anchor,
                    start: budget.values,
                });
                budget.take(1, pos)?;
                continue;
            }
            Event::MappingStart(anchor, _) => {
                // The parser marks a block mapping at its first key's indicator, not at the key;
                // the mapping takes its first key's position instead (see the key branch below).
                stack.push(Frame::Map {
                    path: next_path.unwrap_or_default(),
                    entries: Map::new(),
                    key: None,
                    anchor,
                    start: budget.values,
                });
                budget.take(1, pos)?;
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq {
                    items,
                    anchor,
                    start,
                    ..
                }) => {
                    budget.anchor(anchor, start);
                    remember(&mut anchors, anchor, Json::Array(items))
                }
                Some(Frame::Map {
                    entries,
                    anchor,
                    start,
                    ..
                }) => {
                    budget.anchor(anchor, start);
                    remember(&mut anchors, anchor, Json::Object(entries))
                }
                None => continue,
            },
            Event::Alias(id) => {
                // Counted before it is copied: the copy is what a bomb would make explode.
                budget.take(budget.anchored.get(&id).copied().unwrap_or(1), pos)?;
                anchors.get(&id).cloned().ok_or_else(|| YamlError {
                    pos,
                    message: "alias to an unknown anchor".into(),
                })?
            }
            Event::Scalar(text, style, anchor, _) => {
                budget.take(1, pos)?;
                if anchor > 0 {
                    budget.anchored.insert(anchor, 1);
                }
                if let Some(p) = &next_path {
                    doc.positions.entry(p.clone()).or_insert(pos);
                }
                let v = match next_path {
                    None => Json::String(text),
                    Some(_) if style != TScalarStyle::Plain => {
                        Json::String(substitute(&text, lookup, pos)?)
                    }
                    Some(_) => match resolve_plain(&text) {
                        Json::String(s) => Json::String(substitute(&s, lookup, pos)?),
                        other => other,
                    },
                };
                remember(&mut anchors, anchor, v)
            }
        };
        match stack.last_mut() {
            None => root = Some(value),
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map {
                path, entries, key, ..
            }) => match key.take() {
                None => {
                    let k = match value {
                        Json::String(s) => s,
                        other => other.to_string(),
                    };
                    doc.positions.entry(path.clone()).or_insert(pos);
                    doc.positions.insert(join(path, &k), pos);
                    *key = Some(k);
                }
                Some(k) => {
                    entries.insert(k, value);
                }
            },
        }
    }
    doc.value = root.unwrap_or(Json::Null);
    Ok(doc)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn remember(anchors: &mut HashMap<usize, Json>, anchor: usize, value: Json) -> Json {
    if anchor > 0 {
        anchors.insert(anchor, value.clone());
    }
    value
}

/// YAML 1.2 core schema for unquoted scalars.
fn resolve_plain(s: &str) -> Json {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Json::Null,
        "true" | "True" | "TRUE" => return Json::Bool(true),
        "false" | "False" | "FALSE" => return Json::Bool(false),
        _ => {}
    }
    let int = if let Some(hex) = s.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()
    } else if let Some(oct) = s.strip_prefix("0o") {
        i64::from_str_radix(oct, 8).ok()
    } else if s
        .bytes()
        .enumerate()
        .all(|(i, b)| b.is_ascii_digit() || (i == 0 && (b == b'-' || b == b'+')))
    {
        s.parse::<i64>().ok()
    } else {
        None
    };
    if let Some(i) = int {
        return Json::from(i);
    }
    let looks_numeric = s.bytes().any(|b| b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
    if looks_numeric {
        if let Some(n) = s.parse::<f64>().ok().and_then(Number::from_f64) {
            return Json::Number(n);
        }
    }
    Json::String(s.to_owned())
}

/// Replaces each `${NAME}` with its value; an unset name is an error, as upstream.
fn substitute(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    pos: Pos,
) -> Result<String, YamlError> {
    if !s.contains("${") {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        match lookup(name) {
            Some(v) => out.push_str(&v),
            None => {
                return Err(YamlError {
                    pos,
                    message: format!("environment variable \"{name}\" is not set"),
                })
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "s3cret".to_owned())
    }

    #[test]
    fn builds_json_with_core_schema_types() {
        let doc = parse(
            "a: 1\nb: -2.5\nc: true\nd: ~\ne: '1'\nf: [x, 0x10]\ng: {h: null}\ni: 1.2.3\n",
            &env,
        )
        .unwrap();
        assert_eq!(
            doc.value,
            json!({"a": 1, "b": -2.5, "c": true, "d": null, "e": "1", "f": ["x", 16], "g": {"h": null}, "i": "1.2.3"})
        );
    }

    #[test]
    fn records_positions_of_keys_and_items() {
        let text = "routes:\n  - name: one\n    when:\n      source: gh\n  - name: two\n";
        let doc = parse(text, &env).unwrap();
        assert_eq!(doc.pos("routes"), Some(Pos { line: 1, col: 1 }));
        assert_eq!(
            doc.pos("routes[0].when.source"),
            Some(Pos { line: 4, col: 7 })
        );
        assert_eq!(doc.pos("routes[1].name"), Some(Pos { line: 5, col: 5 }));
        assert_eq!(
            doc.pos("routes[1]"),
            Some(Pos { line: 5, col: 5 }),
            "an item is where its first key is"
        );
        // Unknown paths fall back to the closest known parent.
        assert_eq!(
            doc.pos("routes[1].name.deeper"),
            Some(Pos { line: 5, col: 5 })
        );
    }

    #[test]
    fn substitutes_env_in_strings_only() {
        let doc = parse("t: \"Bearer ${TOKEN}\"\nu: ${TOKEN}\n", &env).unwrap();
        assert_eq!(doc.value, json!({"t": "Bearer s3cret", "u": "s3cret"}));
        let err = parse("a: 1\nt: ${MISSING}\n", &env).unwrap_err();
        assert_eq!(err.pos.line, 2);
        assert!(err.message.contains("\"MISSING\" is not set"));
    }

    #[test]
    fn reports_syntax_errors_with_position() {
        let err = parse("a: [1, 2\nb: 3\n", &env).unwrap_err();
        assert!(err.pos.line >= 1, "{err:?}");
        assert!(!err.message.is_empty());
    }

    #[test]
    fn resolves_anchors_and_aliases() {
        let doc = parse("base: &b {x: 1}\nother: *b\n", &env).unwrap();
        assert_eq!(doc.value["other"], json!({"x": 1}));
    }

    #[test]
    fn an_alias_bomb_is_refused_at_the_alias_that_crosses_the_limit() {
        // Ten aliases of the level below, nine levels: 10^9 values from 11 lines.
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let started = std::time::Instant::now();
        let e = parse(&text, &env).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(e.message.contains("aliases are expanded"), "{}", e.message);
        // At the alias on the line that crosses the limit: a4 would hold 111 111 values.
        assert_eq!(e.pos.line, 5, "{e:?}");
        // A modest use of aliases is fine.
        let shared = "base: &b {retry: {initial: 1s}}\na: *b\nb: *b\n";
        assert!(parse(shared, &env).is_ok());
    }
}
