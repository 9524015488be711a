//! [`Doc`]: a JSON document laid out flat, so that it can cross the plugin boundary by reference.
//!
//! The host parses each event once into a `Doc` and hands plugins a `&Doc` (inside an
//! [`Event`](crate::Event)): a plugin reads fields without any copy or conversion. A `Doc` is two
//! buffers, a node array in document order and one string arena, so cloning it is two `memcpy`s and
//! it has a stable layout (`abi_stable`'s `RVec`/`RString`) that both sides agree on.
//!
//! Read it through [`ValueRef`]; build one from `serde_json::Value` or straight from JSON text.

use std::fmt;

use abi_stable::std_types::{RString, RVec};
use abi_stable::StableAbi;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value as Json;

const NULL: u8 = 0;
const BOOL: u8 = 1;
const INT: u8 = 2;
const UINT: u8 = 3;
const FLOAT: u8 = 4;
const STR: u8 = 5;
const ARRAY: u8 = 6;
const OBJECT: u8 = 7;

/// One value of a [`Doc`]. Containers are followed by their children; an object's children come in
/// key/value pairs, each key a string node.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq)]
#[doc(hidden)]
pub struct Node {
    kind: u8,
    /// Strings: byte length. Arrays: item count. Objects: entry count.
    len: u32,
    /// Number of nodes in this subtree, itself included, so a reader can skip it.
    span: u32,
    /// Strings: byte offset into the arena. Numbers and booleans: their bits.
    bits: u64,
}

/// A JSON document in flat form: a node array in document order and one string arena, with a
/// stable layout, so the daemon can lend it to a plugin by reference and copy it with two
/// `memcpy`s. Read it through [`ValueRef`] ([`Doc::root`]); build one from a `serde_json::Value`
/// ([`Doc::from_json`]) or from JSON text ([`Doc::parse`]).
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq)]
pub struct Doc {
    nodes: RVec<Node>,
    text: RString,
}

/// What kind of JSON value a [`ValueRef`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `null`
    Null,
    /// `true` or `false`
    Bool,
    /// Any number.
    Number,
    /// A string.
    String,
    /// An array.
    Array,
    /// An object.
    Object,
}

impl Doc {
    /// Converts a `serde_json::Value`.
    pub fn from_json(value: &Json) -> Doc {
        let mut b = Builder::default();
        b.push_json(value);
        b.finish()
    }

    /// Like [`from_json`](Self::from_json), with the root object's `first` keys (those present)
    /// placed first, in that order, so that reading them scans the fewest entries.
    #[doc(hidden)]
    pub fn from_json_keys_first(value: &Json, first: &[&str]) -> Doc {
        let Json::Object(map) = value else {
            return Doc::from_json(value);
        };
        let mut b = Builder::default();
        let at = b.open(OBJECT);
        let firsts = first.iter().filter_map(|k| map.get_key_value(*k));
        let rest = map.iter().filter(|(k, _)| !first.contains(&k.as_str()));
        for (k, v) in firsts.chain(rest) {
            b.string(k);
            b.push_json(v);
        }
        b.close(at, map.len());
        b.finish()
    }

    /// An object of the given entries, in order; a [`Part::Doc`] value is copied in as it is (no
    /// conversion), which is how the daemon wraps a parsed webhook body into an event.
    #[doc(hidden)]
    pub fn object(entries: &[(&str, Part<'_>)]) -> Doc {
        let (nodes, text) = Part::size(entries);
        let mut b = Builder::with_capacity(nodes, text);
        b.object(entries);
        b.finish()
    }

    /// Parses JSON text straight into a `Doc`, without an intermediate `serde_json::Value`.
    pub fn parse(text: &[u8]) -> Result<Doc, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(text);
        // The strings of a document are never longer than its text: one allocation, no growth.
        let mut b = Builder::with_text_capacity(text.len());
        (&mut b).deserialize(&mut de)?;
        de.end()?;
        Ok(b.finish())
    }

    /// The root value.
    pub fn root(&self) -> ValueRef<'_> {
        ValueRef { doc: self, idx: 0 }
    }

    /// Converts back to a `serde_json::Value`.
    pub fn to_json(&self) -> Json {
        self.root().to_json()
    }

    /// A deep copy whose buffers are allocated by the code calling this.
    ///
    /// `RVec` and `RString` free themselves through the allocator of the library that created them.
    /// The host calls this on every value a plugin hands over, so that nothing it keeps would have
    /// to call into a plugin library after that library is unloaded.
    pub fn rehome(&self) -> Doc {
        Doc {
            nodes: RVec::from(self.nodes.as_slice().to_vec()),
            text: RString::from(self.text.as_str()),
        }
    }
}

impl Default for Doc {
    /// An empty object.
    fn default() -> Self {
        Doc::from_json(&Json::Object(Default::default()))
    }
}

impl fmt::Debug for Doc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.root(), f)
    }
}

/// A value for [`Doc::object`].
#[doc(hidden)]
pub enum Part<'a> {
    Str(&'a str),
    Doc(&'a Doc),
    /// A nested object, built in place (no `serde_json::Value` on the way).
    Object(&'a [(&'a str, Part<'a>)]),
}

impl Part<'_> {
    /// The nodes and text bytes of an object of `entries`, to allocate its buffers once.
    fn size(entries: &[(&str, Part<'_>)]) -> (usize, usize) {
        entries.iter().fold((1, 0), |(nodes, text), (k, v)| {
            let (n, t) = match v {
                Part::Str(s) => (1, s.len()),
                Part::Doc(d) => (d.nodes.len(), d.text.len()),
                Part::Object(inner) => Part::size(inner),
            };
            (nodes + 1 + n, text + k.len() + t)
        })
    }
}

/// A borrowed view of one value inside a [`Doc`]: read it with `as_str`, `as_i64`, `get`,
/// `path` (dot paths such as `payload.pr.number`), `items` and `entries`.
#[derive(Clone, Copy)]
pub struct ValueRef<'a> {
    doc: &'a Doc,
    idx: usize,
}

impl<'a> ValueRef<'a> {
    fn node(&self) -> Node {
        self.doc.nodes[self.idx]
    }

    /// The kind of value.
    pub fn kind(&self) -> Kind {
        match self.node().kind {
            NULL => Kind::Null,
            BOOL => Kind::Bool,
            INT | UINT | FLOAT => Kind::Number,
            STR => Kind::String,
            ARRAY => Kind::Array,
            _ => Kind::Object,
        }
    }

    /// `true` for JSON `null`.
    pub fn is_null(&self) -> bool {
        self.node().kind == NULL
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&'a str> {
        let n = self.node();
        (n.kind == STR).then(|| {
            let start = n.bits as usize;
            &self.doc.text.as_str()[start..start + n.len as usize]
        })
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        let n = self.node();
        (n.kind == BOOL).then_some(n.bits != 0)
    }

    /// The number as `i64`, if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        let n = self.node();
        match n.kind {
            INT => Some(n.bits as i64),
            UINT => i64::try_from(n.bits).ok(),
            _ => None,
        }
    }

    /// The number as `u64`, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        let n = self.node();
        match n.kind {
            UINT => Some(n.bits),
            INT => u64::try_from(n.bits as i64).ok(),
            _ => None,
        }
    }

    /// Any number as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        let n = self.node();
        match n.kind {
            INT => Some(n.bits as i64 as f64),
            UINT => Some(n.bits as f64),
            FLOAT => Some(f64::from_bits(n.bits)),
            _ => None,
        }
    }

    /// Number of items (arrays) or entries (objects); 0 for anything else.
    pub fn len(&self) -> usize {
        match self.node().kind {
            ARRAY | OBJECT => self.node().len as usize,
            _ => 0,
        }
    }

    /// `true` when [`len`](Self::len) is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn children(&self) -> Children<'a> {
        let n = self.node();
        let count = match n.kind {
            ARRAY => n.len as usize,
            OBJECT => 2 * n.len as usize,
            _ => 0,
        };
        Children {
            doc: self.doc,
            next: self.idx + 1,
            left: count,
        }
    }

    /// The items of an array (nothing for other kinds).
    pub fn items(&self) -> impl Iterator<Item = ValueRef<'a>> {
        let is_array = self.node().kind == ARRAY;
        self.children().filter(move |_| is_array)
    }

    /// The entries of an object, in document order (nothing for other kinds).
    pub fn entries(&self) -> impl Iterator<Item = (&'a str, ValueRef<'a>)> {
        let mut children = self.children();
        let is_object = self.node().kind == OBJECT;
        std::iter::from_fn(move || {
            if !is_object {
                return None;
            }
            let key = children.next()?;
            let value = children.next()?;
            Some((key.as_str().unwrap_or_default(), value))
        })
    }

    /// The value under `key`, if this is an object that has it.
    pub fn get(&self, key: &str) -> Option<ValueRef<'a>> {
        self.entries().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Follows a dot path such as `payload.pr.number` or `payload.labels.0`: object keys, and array
    /// indexes written as numbers. The empty path is this value.
    pub fn path(&self, path: &str) -> Option<ValueRef<'a>> {
        if path.is_empty() {
            return Some(*self);
        }
        path.split('.')
            .try_fold(*self, |v, seg| match v.node().kind {
                OBJECT => v.get(seg),
                ARRAY => seg.parse::<usize>().ok().and_then(|i| v.items().nth(i)),
                _ => None,
            })
    }

    /// Strict equality with a JSON value, as JavaScript's `===` on parsed JSON, except that objects
    /// and arrays compare by content. Numbers compare by value (`1` equals `1.0`).
    pub fn equals(&self, other: &Json) -> bool {
        match other {
            Json::Null => self.is_null(),
            Json::Bool(b) => self.as_bool() == Some(*b),
            Json::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) if self.as_i64().is_some() => self.as_i64() == Some(i),
                (_, Some(u)) if self.as_u64().is_some() => self.as_u64() == Some(u),
                _ => self.as_f64().is_some() && self.as_f64() == n.as_f64(),
            },
            Json::String(s) => self.as_str() == Some(s.as_str()),
            Json::Array(a) => {
                self.node().kind == ARRAY
                    && self.len() == a.len()
                    && self.items().zip(a).all(|(x, y)| x.equals(y))
            }
            Json::Object(o) => {
                self.node().kind == OBJECT
                    && self.len() == o.len()
                    && o.iter()
                        .all(|(k, v)| self.get(k).is_some_and(|x| x.equals(v)))
            }
        }
    }

    /// Converts this value to a `serde_json::Value`.
    pub fn to_json(&self) -> Json {
        let n = self.node();
        match n.kind {
            NULL => Json::Null,
            BOOL => Json::Bool(n.bits != 0),
            INT => Json::from(n.bits as i64),
            UINT => Json::from(n.bits),
            FLOAT => serde_json::Number::from_f64(f64::from_bits(n.bits))
                .map_or(Json::Null, Json::Number),
            STR => Json::String(self.as_str().unwrap_or_default().to_owned()),
            ARRAY => Json::Array(self.items().map(|v| v.to_json()).collect()),
            _ => Json::Object(
                self.entries()
                    .map(|(k, v)| (k.to_owned(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Renders the value as text the way a template would: strings bare, everything else as JSON.
    pub fn to_text(&self) -> String {
        match self.as_str() {
            Some(s) => s.to_owned(),
            None => self.to_string(),
        }
    }
}

impl fmt::Display for ValueRef<'_> {
    /// Compact JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_string(self).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

impl fmt::Debug for ValueRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

struct Children<'a> {
    doc: &'a Doc,
    next: usize,
    left: usize,
}

impl<'a> Iterator for Children<'a> {
    type Item = ValueRef<'a>;
    fn next(&mut self) -> Option<ValueRef<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let v = ValueRef {
            doc: self.doc,
            idx: self.next,
        };
        self.next += v.node().span as usize;
        Some(v)
    }
}

impl Serialize for ValueRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.node();
        match n.kind {
            NULL => s.serialize_unit(),
            BOOL => s.serialize_bool(n.bits != 0),
            INT => s.serialize_i64(n.bits as i64),
            UINT => s.serialize_u64(n.bits),
            FLOAT => s.serialize_f64(f64::from_bits(n.bits)),
            STR => s.serialize_str(self.as_str().unwrap_or_default()),
            ARRAY => {
                let mut seq = s.serialize_seq(Some(self.len()))?;
                for item in self.items() {
                    seq.serialize_element(&item)?;
                }
                seq.end()
            }
            _ => {
                let mut map = s.serialize_map(Some(self.len()))?;
                for (k, v) in self.entries() {
                    map.serialize_entry(k, &v)?;
                }
                map.end()
            }
        }
    }
}

impl Serialize for Doc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.root().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Doc, D::Error> {
        let mut b = Builder::default();
        (&mut b).deserialize(d)?;
        Ok(b.finish())
    }
}

/// Appends nodes in document order; containers are patched once their children are in.
#[derive(Default)]
struct Builder {
    nodes: Vec<Node>,
    text: String,
}

impl Builder {
    fn with_capacity(nodes: usize, text: usize) -> Builder {
        Builder {
            nodes: Vec::with_capacity(nodes),
            text: String::with_capacity(text),
        }
    }

    /// A builder for a document from `len` bytes of JSON text, sized so that it rarely grows:
    /// its strings fit in `len` bytes, and its nodes average about one per 8 bytes of JSON.
    fn with_text_capacity(len: usize) -> Builder {
        Builder::with_capacity((len / 8).clamp(4, 4096), len)
    }

    fn finish(self) -> Doc {
        Doc {
            nodes: RVec::from(self.nodes),
            text: RString::from(self.text),
        }
    }

    fn leaf(&mut self, kind: u8, bits: u64) {
        self.nodes.push(Node {
            kind,
            len: 0,
            span: 1,
            bits,
        });
    }

    fn string(&mut self, s: &str) {
        let offset = self.text.len() as u64;
        self.text.push_str(s);
        self.nodes.push(Node {
            kind: STR,
            len: s.len() as u32,
            span: 1,
            bits: offset,
        });
    }

    /// Starts a container; returns its index for [`close`](Self::close).
    fn open(&mut self, kind: u8) -> usize {
        self.nodes.push(Node {
            kind,
            len: 0,
            span: 1,
            bits: 0,
        });
        self.nodes.len() - 1
    }

    fn close(&mut self, at: usize, len: usize) {
        let span = self.nodes.len() - at;
        let node = &mut self.nodes[at];
        node.len = len as u32;
        node.span = span as u32;
    }

    /// Appends an object of `entries`, in order.
    fn object(&mut self, entries: &[(&str, Part<'_>)]) {
        let at = self.open(OBJECT);
        for (k, v) in entries {
            self.string(k);
            match v {
                Part::Str(s) => self.string(s),
                Part::Doc(d) => self.embed(d),
                Part::Object(inner) => self.object(inner),
            }
        }
        self.close(at, entries.len());
    }

    /// Appends a whole document as one value: its nodes, with string offsets moved past the text
    /// already here (spans are relative, so they stay).
    fn embed(&mut self, doc: &Doc) {
        let shift = self.text.len() as u64;
        self.text.push_str(doc.text.as_str());
        self.nodes.extend(doc.nodes.iter().map(|n| match n.kind {
            STR => Node {
                bits: n.bits + shift,
                ..*n
            },
            _ => *n,
        }));
    }

    fn push_json(&mut self, value: &Json) {
        match value {
            Json::Null => self.leaf(NULL, 0),
            Json::Bool(b) => self.leaf(BOOL, *b as u64),
            Json::Number(n) => {
                if let Some(i) = n.as_i64() {
                    self.leaf(INT, i as u64)
                } else if let Some(u) = n.as_u64() {
                    self.leaf(UINT, u)
                } else {
                    self.leaf(FLOAT, n.as_f64().unwrap_or(0.0).to_bits())
                }
            }
            Json::String(s) => self.string(s),
            Json::Array(items) => {
                let at = self.open(ARRAY);
                items.iter().for_each(|v| self.push_json(v));
                self.close(at, items.len());
            }
            Json::Object(map) => {
                let at = self.open(OBJECT);
                for (k, v) in map {
                    self.string(k);
                    self.push_json(v);
                }
                self.close(at, map.len());
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for &mut Builder {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// A map key: always a string node.
struct Key<'b>(&'b mut Builder);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        // Visited rather than deserialized into a `Cow<str>`, which serde always makes owned:
        // that was one allocation per key of every webhook body.
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.string(v);
        Ok(())
    }
}

impl<'de> Visitor<'de> for &mut Builder {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.leaf(NULL, 0);
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        self.leaf(NULL, 0);
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.leaf(BOOL, v as u64);
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.leaf(INT, v as u64);
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        match i64::try_from(v) {
            Ok(i) => self.leaf(INT, i as u64),
            Err(_) => self.leaf(UINT, v),
        }
        Ok(())
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.leaf(FLOAT, v.to_bits());
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.string(v);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let at = self.open(ARRAY);
        let mut len = 0;
        while seq.next_element_seed(&mut *self)?.is_some() {
            len += 1;
        }
        self.close(at, len);
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let at = self.open(OBJECT);
        let mut len = 0;
        while map.next_key_seed(Key(self))?.is_some() {
            map.next_value_seed(&mut *self)?;
            len += 1;
        }
        self.close(at, len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Json {
        json!({"a": 1, "b": {"c": [true, null, "x", -2, 2.5, 18446744073709551615u64]}, "e": {}, "f": []})
    }

    #[test]
    fn round_trips_through_both_builders() {
        let v = sample();
        let from_value = Doc::from_json(&v);
        let from_text = Doc::parse(v.to_string().as_bytes()).unwrap();
        assert_eq!(from_value.to_json(), v);
        assert_eq!(from_text.to_json(), v);
        assert_eq!(serde_json::to_value(&from_text).unwrap(), v);
        assert_eq!(from_value.rehome().to_json(), v);
    }

    #[test]
    fn paths_reach_keys_and_indexes() {
        let d = Doc::from_json(&sample());
        let r = d.root();
        assert_eq!(r.path("a").and_then(|v| v.as_i64()), Some(1));
        assert_eq!(r.path("b.c.2").and_then(|v| v.as_str()), Some("x"));
        assert_eq!(r.path("b.c.3").and_then(|v| v.as_i64()), Some(-2));
        assert_eq!(r.path("b.c.5").and_then(|v| v.as_u64()), Some(u64::MAX));
        assert!(r.path("b.c.1").unwrap().is_null());
        assert!(r.path("b.c.9").is_none());
        assert!(r.path("a.z").is_none());
        assert_eq!(r.path("e").map(|v| v.is_empty()), Some(true));
        assert_eq!(r.get("f").map(|v| v.kind()), Some(Kind::Array));
    }

    #[test]
    fn equality_is_strict_but_numeric_by_value() {
        let d = Doc::from_json(&json!({"n": 1, "s": "1", "o": {"k": [1, "a"]}}));
        let r = d.root();
        assert!(r.get("n").unwrap().equals(&json!(1.0)));
        assert!(!r.get("n").unwrap().equals(&json!("1")));
        assert!(!r.get("s").unwrap().equals(&json!(1)));
        assert!(r.get("o").unwrap().equals(&json!({"k": [1, "a"]})));
        assert!(!r.get("o").unwrap().equals(&json!({"k": [1]})));
    }

    #[test]
    fn objects_embed_documents_as_they_are() {
        let inner = Doc::parse(br#"{"a": "x", "b": [1, "y"]}"#).unwrap();
        let outer = Doc::object(&[
            ("s", Part::Str("t")),
            ("o", Part::Object(&[("k", Part::Str("v"))])),
            ("d", Part::Doc(&inner)),
        ]);
        assert_eq!(
            outer.to_json(),
            json!({"s": "t", "o": {"k": "v"}, "d": {"a": "x", "b": [1, "y"]}})
        );
        // Sized exactly up front.
        assert_eq!(outer.nodes.capacity(), outer.nodes.len());
        assert_eq!(outer.text.capacity(), outer.text.len());
        assert_eq!(
            outer.root().path("d.b.1").and_then(|v| v.as_str()),
            Some("y")
        );
    }

    #[test]
    fn rejects_bad_json_and_trailing_garbage() {
        assert!(Doc::parse(b"{\"a\":").is_err());
        assert!(Doc::parse(b"{} x").is_err());
    }
}
